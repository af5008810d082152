import math

import pytest
import torch

from perchead.geometry import (
    Cameras,
    Gaussians,
    camera_centers,
    eval_sh,
    focal_from_fov,
    input_camera,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_viewmats,
    project_points,
    turntable_viewmats,
    unproject_depth,
    yaw_pitch_grid,
)
from perchead.geometry.cameras import fov_from_focal


def test_look_at_is_a_rigid_opencv_camera():
    eye = torch.tensor([[0.3, 0.2, 1.4], [0.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
    viewmats = look_at(eye, torch.zeros(3))
    rot = viewmats[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3))
    torch.testing.assert_close(camera_centers(viewmats), eye, atol=1e-6, rtol=0)
    # The target sits on the optical axis, in front of the camera (+z).
    target_cam = viewmats[:, :3, 3]
    assert torch.allclose(target_cam[:, :2], torch.zeros(3, 2), atol=1e-6)
    assert (target_cam[:, 2] > 0).all()


def test_front_camera_sees_the_head_upright_and_unmirrored():
    cams = input_camera(size=100)
    above, subject_left, subject_right = torch.tensor([[0.0, 0.1, 0.0], [0.08, 0.0, 0.0], [-0.08, 0.0, 0.0]])
    pix, depth = project_points(torch.stack([above, subject_left, subject_right]), cams.viewmats, cams.Ks)
    assert pix[0, 0, 1] < 50  # +y (up) is towards the top of the image
    assert pix[0, 1, 0] > 50 > pix[0, 2, 0]  # the subject's left ear appears on the image's right, as in a photo
    assert torch.allclose(depth, torch.full_like(depth, 1.5))


def test_positive_yaw_moves_the_camera_towards_the_left_ear():
    cams = input_camera(size=64, yaw_deg=90.0)
    assert torch.allclose(camera_centers(cams.viewmats)[0], torch.tensor([1.5, 0.0, 0.0]), atol=1e-6)


def test_head_fills_the_expected_share_of_the_input_frame():
    cams = input_camera(size=512)
    pix, _ = project_points(torch.tensor([[0.0, 0.12, 0.0], [0.0, -0.12, 0.0]]), cams.viewmats, cams.Ks)
    share = (pix[0, 1, 1] - pix[0, 0, 1]).item() / 512
    assert 1 / 1.65 * 0.9 < share < 1 / 1.65 * 1.1


def test_opengl_roundtrip_and_axes():
    c2w_gl = torch.eye(4)
    c2w_gl[:3, 3] = torch.tensor([0.0, 0.0, 2.0])  # an OpenGL camera on +z looking down -z
    viewmat = opengl_to_opencv(c2w_gl)
    torch.testing.assert_close(viewmat, look_at(torch.tensor([0.0, 0.0, 2.0]), torch.zeros(3)), atol=1e-6, rtol=0)
    torch.testing.assert_close(opencv_to_opengl(viewmat), c2w_gl)


def test_orbits_turntables_and_grids():
    viewmats = turntable_viewmats(8, radius=2.0, pitch_deg=15.0)
    centers = camera_centers(viewmats)
    assert viewmats.shape == (8, 4, 4)
    torch.testing.assert_close(centers.norm(dim=-1), torch.full((8,), 2.0))
    torch.testing.assert_close(centers[:, 1], torch.full((8,), 2.0 * math.sin(math.radians(15.0))))
    assert torch.allclose(camera_centers(orbit_viewmats([180.0], 0.0, 1.0))[0], torch.tensor([0.0, 0.0, -1.0]),
                          atol=1e-6)
    grid, yaw, pitch = yaw_pitch_grid([-90, 0, 90], [-20, 20], radius=1.0)
    assert grid.shape == (6, 4, 4) and yaw.tolist() == [-90, 0, 90] * 2 and pitch.tolist() == [-20] * 3 + [20] * 3
    cams = Cameras.orbit([0, 90], 0.0, radius=1.0, fov_deg=30, size=64)
    assert len(cams) == 2 and cams.Ks.shape == (2, 3, 3)
    assert fov_from_focal(focal_from_fov(30.0, 64), 64) == pytest.approx(30.0)


def test_camera_shapes_are_validated():
    with pytest.raises(ValueError, match="viewmats"):
        Cameras(torch.eye(3)[None], torch.eye(3)[None], 8, 8)


def test_gaussians_validate_shapes_and_activate():
    g = Gaussians.from_activated(torch.zeros(4, 3), torch.full((4, 3), 0.01), torch.tensor([[2.0, 0, 0, 0]] * 4),
                                 torch.full((4,), 0.25), torch.full((4, 3), 0.8))
    torch.testing.assert_close(g.scales, torch.full((4, 3), 0.01))
    torch.testing.assert_close(g.opacities, torch.full((4,), 0.25))
    torch.testing.assert_close(g.rotations, torch.tensor([[1.0, 0, 0, 0]] * 4))
    torch.testing.assert_close(g.rgb, torch.full((4, 3), 0.8))
    with pytest.raises(ValueError, match="log_scales"):
        Gaussians(torch.zeros(4, 3), torch.zeros(3, 3), torch.zeros(4, 4), torch.zeros(4), torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="SH coefficients"):
        Gaussians(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 4), torch.zeros(4), torch.zeros(4, 3, 3))


def test_sh_degree_one_is_linear_in_direction():
    sh = torch.zeros(1, 4, 3)
    sh[0, 2, 0] = 1.0  # the z-aligned band, red channel
    plus_z, minus_z = eval_sh(sh, torch.tensor([[0.0, 0, 1]])), eval_sh(sh, torch.tensor([[0.0, 0, -1]]))
    assert plus_z[0, 0] == pytest.approx(0.4886025, rel=1e-6) and minus_z[0, 0] == pytest.approx(-0.4886025, rel=1e-6)


def test_unproject_depth_inverts_project_points():
    """A pixel centre pushed out to its depth and projected back lands on the same pixel centre."""
    cams = Cameras.orbit([35.0], [-10.0], radius=1.2, size=24)
    depth = 1.0 + torch.rand(24, 24, dtype=torch.float64)
    vm, K = cams.viewmats[0].double(), cams.Ks[0].double()
    pts = unproject_depth(depth, vm, K)
    pix, z = project_points(pts.reshape(-1, 3), vm[None], K[None])
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    assert torch.allclose(z[0], depth.reshape(-1), atol=1e-9)
    assert torch.allclose(pix[0], torch.stack([xs, ys], -1).reshape(-1, 2).double() + 0.5, atol=1e-7)

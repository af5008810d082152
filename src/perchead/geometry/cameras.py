"""Pinhole cameras in the convention gsplat uses.

* ``viewmat``: 4x4 world-to-camera matrix, OpenCV axes (x right, y down, z forward).
* ``K``: 3x3 intrinsics in pixels; the centre of pixel (u, v) sits at (u + 0.5, v + 0.5).

The canonical head frame (docs/design.md section 3) is metres, origin near the head centre, +y up, face towards
+z. A camera "in front of the face" therefore sits on +z and looks down -z; yaw turns it around +y (positive
yaw moves it towards the subject's left ear, i.e. +x), pitch lifts it above the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# The standard input camera: a head (chin to crown with hair, ~0.24 m) fills 1/1.65 of the frame height, the
# crop the paper uses (docs/design.md section 2). Training data, synthetic renders and photo preprocessing all
# assume this camera for the input view, so the network sees one consistent framing.
HEAD_CAMERA_RADIUS = 1.5  # metres from the head centre
HEAD_CAMERA_FOV_DEG = 15.0  # full vertical (= horizontal) field of view

# OpenGL/Blender cameras look down -z with y up; OpenCV looks down +z with y down.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def intrinsics(
    fx: float, fy: float | None = None, cx: float | None = None, cy: float | None = None,
    width: int | None = None, height: int | None = None,
) -> Tensor:
    """3x3 pixel-space K. ``cx``/``cy`` default to the image centre (needs width/height)."""
    fy = fx if fy is None else fy
    if cx is None or cy is None:
        if width is None or height is None:
            raise ValueError("give cx and cy, or width and height to centre the principal point")
        cx = width / 2.0 if cx is None else cx
        cy = height / 2.0 if cy is None else cy
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a full field of view ``fov_deg`` across ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


def fov_from_focal(focal: float, size: int) -> float:
    return math.degrees(2.0 * math.atan(0.5 * size / focal))


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """World-to-camera 4x4 (OpenCV axes) for cameras at ``eye`` looking at ``target``.

    Batched over leading dimensions; ``up`` is the world's up direction (+y by default).
    """
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device).expand_as(eye)
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    right = torch.linalg.cross(forward, up, dim=-1)  # camera +x = y_down x z_forward = forward x up
    # Looking straight along up leaves "right" undefined: pick a fixed horizontal axis instead of NaNs.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-8
    fallback = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, -1.0], dtype=eye.dtype, device=eye.device)
                                  .expand_as(eye), dim=-1)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)  # camera +y = z x x
    rot = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world coordinates
    viewmat = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    viewmat[..., :3, :3] = rot
    viewmat[..., :3, 3] = -(rot @ eye.unsqueeze(-1)).squeeze(-1)
    viewmat[..., 3, 3] = 1.0
    return viewmat


def orbit_position(yaw_deg: Tensor | float, pitch_deg: Tensor | float, radius: float,
                   target: Sequence[float] = (0.0, 0.0, 0.0)) -> Tensor:
    """Camera centre on a sphere around ``target``: yaw 0 / pitch 0 is in front of the face (+z)."""
    yaw = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=torch.float32))
    pitch = torch.deg2rad(torch.as_tensor(pitch_deg, dtype=torch.float32))
    offset = torch.stack(
        [torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch), torch.cos(yaw) * torch.cos(pitch)], dim=-1
    )
    return offset * radius + torch.tensor(target, dtype=torch.float32)


def orbit_viewmats(yaw_deg: Tensor | Sequence[float], pitch_deg: Tensor | Sequence[float] | float,
                   radius: float, target: Sequence[float] = (0.0, 0.0, 0.0)) -> Tensor:
    """[C, 4, 4] world-to-camera matrices of cameras on a sphere, all looking at ``target``."""
    yaw = torch.as_tensor(yaw_deg, dtype=torch.float32).reshape(-1)
    pitch = torch.as_tensor(pitch_deg, dtype=torch.float32).reshape(-1).expand_as(yaw)
    eye = orbit_position(yaw, pitch, radius, target)
    return look_at(eye, torch.tensor(target, dtype=torch.float32))


def turntable_viewmats(n_frames: int, radius: float, pitch_deg: float = 0.0,
                       target: Sequence[float] = (0.0, 0.0, 0.0), start_yaw_deg: float = 0.0) -> Tensor:
    """A full 360 degree turn around the vertical axis, ``n_frames`` evenly spaced (last != first)."""
    yaw = start_yaw_deg + torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    return orbit_viewmats(yaw, pitch_deg, radius, target)


def yaw_pitch_grid(yaws_deg: Sequence[float], pitches_deg: Sequence[float], radius: float,
                   target: Sequence[float] = (0.0, 0.0, 0.0)) -> tuple[Tensor, Tensor, Tensor]:
    """Every (pitch, yaw) pair, pitch-major: returns viewmats [P*Y, 4, 4] and the yaw and pitch of each."""
    pitch, yaw = torch.meshgrid(
        torch.as_tensor(pitches_deg, dtype=torch.float32), torch.as_tensor(yaws_deg, dtype=torch.float32),
        indexing="ij",
    )
    yaw, pitch = yaw.reshape(-1), pitch.reshape(-1)
    return orbit_viewmats(yaw, pitch, radius, target), yaw, pitch


def opengl_to_opencv(c2w_gl: Tensor) -> Tensor:
    """Camera-to-world in OpenGL/Blender axes (NeRF ``transform_matrix``) -> world-to-camera OpenCV viewmat."""
    c2w_cv = torch.as_tensor(c2w_gl) @ _GL_TO_CV.to(c2w_gl)
    return torch.linalg.inv(c2w_cv)


def opencv_to_opengl(viewmat: Tensor) -> Tensor:
    """Inverse of :func:`opengl_to_opencv`: OpenCV world-to-camera -> OpenGL camera-to-world."""
    return torch.linalg.inv(torch.as_tensor(viewmat)) @ _GL_TO_CV.to(viewmat)


def camera_centers(viewmats: Tensor) -> Tensor:
    """Camera centres in world coordinates, [..., 3]."""
    rot, trans = viewmats[..., :3, :3], viewmats[..., :3, 3:]
    return -(rot.transpose(-1, -2) @ trans).squeeze(-1)


def project_points(points: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates [C, N, 2] and camera-space depth [C, N] of world points [N, 3]."""
    cam = points @ viewmats[..., :3, :3].transpose(-1, -2) + viewmats[..., None, :3, 3]
    z = cam[..., 2]
    uv = cam[..., :2] / z.unsqueeze(-1).clamp_min(1e-8)
    pix = uv * torch.stack([Ks[..., 0, 0], Ks[..., 1, 1]], -1)[..., None, :] + Ks[..., None, :2, 2]
    return pix, z


def unproject_depth(depth: Tensor, viewmat: Tensor, K: Tensor) -> Tensor:
    """World points [H, W, 3] of the pixel centres of one camera at camera-space ``depth`` [H, W] (the inverse
    of :func:`project_points`; pixel centres at +0.5, as the rasterizers sample them)."""
    h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5,
                            torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5, indexing="ij")
    x = (xs - K[0, 2]) / K[0, 0] * depth
    y = (ys - K[1, 2]) / K[1, 1] * depth
    cam = torch.stack([x, y, depth], -1)
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    return (cam - trans) @ rot


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size."""

    viewmats: Tensor  # [C, 4, 4]
    Ks: Tensor  # [C, 3, 3]
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.ndim == 2:
            self.viewmats = self.viewmats[None]
        if self.Ks.ndim == 2:
            self.Ks = self.Ks[None].expand(len(self.viewmats), 3, 3)
        if self.viewmats.shape[-2:] != (4, 4) or self.Ks.shape[-2:] != (3, 3):
            raise ValueError(f"viewmats must be [C,4,4] and Ks [C,3,3], got {tuple(self.viewmats.shape)} "
                             f"and {tuple(self.Ks.shape)}")
        if len(self.viewmats) != len(self.Ks):
            raise ValueError(f"{len(self.viewmats)} viewmats but {len(self.Ks)} intrinsics")

    def __len__(self) -> int:
        return len(self.viewmats)

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    @classmethod
    def orbit(cls, yaw_deg: Sequence[float] | Tensor, pitch_deg: Sequence[float] | Tensor | float = 0.0,
              radius: float = 1.0, fov_deg: float = 14.0, size: int = 512,
              target: Sequence[float] = (0.0, 0.0, 0.0)) -> Cameras:
        """Square cameras on a sphere looking at ``target`` (a narrow portrait lens by default)."""
        viewmats = orbit_viewmats(yaw_deg, pitch_deg, radius, target)
        K = intrinsics(focal_from_fov(fov_deg, size), width=size, height=size)
        return cls(viewmats, K.expand(len(viewmats), 3, 3).clone(), size, size)


def input_camera(size: int = 512, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> Cameras:
    """The standard camera looking at the head centre (see HEAD_CAMERA_RADIUS / HEAD_CAMERA_FOV_DEG)."""
    return Cameras.orbit([yaw_deg], pitch_deg, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, size)

"""The test-time fit (perchead.inference.fit) and the input camera (perchead.inference.pose).

The demo checkpoint and the project's synthetic heads stand in for a trained model and real photos; every
threshold below says what it was measured at.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import save_file

from perchead.data.synth import SynthConfig, make_subject, subject_split
from perchead.eval.metrics import psnr
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, orbit_viewmats
from perchead.geometry.head_surface import EARS, FACE, NECK
from perchead.inference import fit as fit_module
from perchead.inference.fit import (
    FitConfig,
    FitDivergedError,
    TrustAdam,
    align_midline,
    banded_colour,
    child_shrink,
    densify,
    fit_face_width,
    fit_head_height,
    fit_head_width,
    fit_to_photo,
    mirror_index,
    photo_colours,
    photo_landmarks,
    photo_midline,
    project_appearance,
    shading_kept,
    template_inputs,
    turned_viewmats,
)
from perchead.inference.pose import Pose, camera_K, estimate_pose, fuse
from perchead.inference.pose_net import PoseNet, PoseNetConfig, bundled_pose_net, pose_from_net, yaw_error
from perchead.inference.reconstruct import load_model
from perchead.inference.tune import fit_network, tune_network
from perchead.render import rasterize
from perchead.render.project import quat_to_rotmat

pytestmark = pytest.mark.usefixtures("deterministic")


@pytest.fixture(scope="module")
def demo():
    return load_model("demo").eval()


# The symmetric heads the demo checkpoint was trained on (and every threshold below was measured on), not
# `perchead synth`'s newer asymmetric default.
SYNTH = SynthConfig(heads="symmetric")


def synth_view(index: int, yaw: float, pitch: float = 0.0, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out synthetic head seen by the standard camera: image on white [3, S, S] and alpha [1, S, S]."""
    subject = make_subject(SYNTH, index)
    cams = Cameras.orbit([yaw], pitch, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, size)
    with torch.no_grad():
        out = rasterize(subject.gaussians, cams.viewmats, cams.Ks, size, size, backend="cpu")
    return out.rgb[0].permute(2, 0, 1).contiguous(), out.alpha[0].permute(2, 0, 1).contiguous()


TEST_SUBJECTS = [i for i in range(100) if subject_split(SYNTH, i) == "test"][:3]


@pytest.fixture(scope="module")
def prediction(demo):
    """The demo's head for a held-out synthetic subject seen from the front."""
    image, mask = synth_view(TEST_SUBJECTS[0], 0.0)
    with torch.no_grad():
        g = demo(image[None], mask[None])[0]
    return g, image, mask


# -- densify --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shrink", [0.5, 0.875])
def test_children_keep_each_parents_mean_and_covariance(prediction, shrink):
    g = prediction[0].select(torch.arange(0, 4096, 97))
    dense, parents = densify(g, 16 * len(g), shrink)
    assert len(dense) == 16 * len(g) and torch.equal(parents, torch.arange(len(g)).repeat_interleave(16))
    cov = lambda q, s: (quat_to_rotmat(q) * s.unsqueeze(-2)) @ (quat_to_rotmat(q) * s.unsqueeze(-2)).mT  # noqa: E731
    means = dense.means.reshape(len(g), 16, 3)
    centred = means - means.mean(1, keepdim=True)
    mixture = cov(dense.quats, dense.scales).reshape(len(g), 16, 3, 3).mean(1) + centred.mT @ centred / 16
    torch.testing.assert_close(means.mean(1), g.means, atol=1e-6, rtol=0)
    torch.testing.assert_close(mixture, cov(g.quats, g.scales), atol=1e-9, rtol=1e-3)
    # each child is `shrink` times its parent along the parent's two largest axes, the thinnest kept
    ratio = (dense.scales.reshape(len(g), 16, 3) / g.scales[:, None]).sort(-1).values
    torch.testing.assert_close(ratio, torch.tensor([shrink, shrink, 1.0]).expand_as(ratio), atol=0, rtol=1e-5)


def test_children_are_no_finer_than_the_photo(prediction):
    """A photo the fit's renders enlarge gets children that much coarser, from CHILD_SHRINK up to its cap."""
    assert child_shrink(224 / 512) == child_shrink(1.0) == fit_module.CHILD_SHRINK == 0.5
    assert child_shrink(224 / 128) == 0.875
    assert child_shrink(4.0) == fit_module.MAX_CHILD_SHRINK
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="upsampling"):
            child_shrink(bad)
    with pytest.raises(ValueError, match="shrink"):
        densify(prediction[0], 16384, 1.0)


@pytest.mark.parametrize("size, given, shrink", [(64, None, 0.5), (112, None, 0.875), (112, 0.5, 0.5)])
def test_the_fit_densifies_as_finely_as_the_photo_allows(demo, prediction, size, given, shrink):
    """The 64 px view fitted at its own size gets the finest children; fitted at 112 px (1.75 times enlarged),
    children 0.875 of their parent unless FitConfig.child_shrink says otherwise; the result and its metadata
    record it."""
    g, image, mask = prediction
    image, mask = (torch.nn.functional.interpolate(t[None], size=(64, 64), mode="area")[0] for t in (image, mask))
    cfg = FitConfig(steps=1, size=size, num_gaussians=16384, child_shrink=given)
    result = fit_to_photo(g, image, mask, cfg, pose=Pose(0.0, 0.0), **template_inputs(demo))
    assert result.child_shrink == shrink and result.metadata(cfg)["child_shrink"] == shrink


@pytest.mark.parametrize("shrink", [0.5, 0.875])
def test_densified_head_renders_like_its_parents(prediction, shrink):
    """Measured 27.8-28.8 dB at 256 px on the demo's head of the example photo and 27.0-30.4 dB here at 128 px
    (the children of neighbouring parents interleave in depth, so it cannot be exact; the demo of issue 27's
    shoulders, the lowest at the profile); the bound, 24 dB, leaves 3 dB; mean |alpha difference| measured
    0.010, bound 0.02. Children 0.875 of their parent (a coarse photo's): 30.4-31.2 dB, alpha 0.009."""
    g = prediction[0]
    dense, _ = densify(g, 65536, shrink)
    vm = orbit_viewmats([0.0, 90.0, 180.0], [0.0] * 3, HEAD_CAMERA_RADIUS)
    K = camera_K(128).expand(3, 3, 3)
    with torch.no_grad():
        a, b = rasterize(g, vm, K, 128, 128), rasterize(dense, vm, K, 128, 128)
    for i in range(3):
        assert float(psnr(b.rgb[i].permute(2, 0, 1), a.rgb[i].permute(2, 0, 1))) > 24.0, i
    assert float((b.alpha - a.alpha).abs().mean()) < 0.02


def test_densify_refuses_a_count_that_is_not_a_square_multiple(prediction):
    with pytest.raises(ValueError, match="square multiple"):
        densify(prediction[0], 3 * 4096)
    g, parents = densify(prediction[0], 0)
    assert g is prediction[0] and len(parents) == 4096


# -- cameras and colours --------------------------------------------------------------------------------------
def test_template_mirror_map_pairs_left_and_right(demo, prediction):
    """The symmetry of the fit goes through the template's own left-right map: every point goes to the point
    nearest its mirror image, the map is (nearly) an involution, and densified children go to children."""
    anchors = demo.template.points()[0]
    mirror = mirror_index(anchors)
    flip = torch.tensor([-1.0, 1.0, 1.0])
    # The builtin template is symmetric by construction: each point's mirror image is (nearly) a template point
    # (measured: max 0 mm, an involution for every point; bounds 2 mm, a tenth of the point spacing, and 95%).
    assert float((anchors[mirror] - anchors * flip).norm(dim=-1).max()) < 2e-3
    assert float((mirror[mirror] == torch.arange(len(anchors))).float().mean()) > 0.95
    dense, parents = densify(prediction[0], 16384)
    child = mirror_index(anchors, parents, dense.means - prediction[0].means[parents])
    assert torch.equal(parents[child], mirror[parents])  # a child's mirror is a child of its parent's mirror


def test_unseen_gaussians_take_their_regions_colour_or_keep_the_networks(demo, prediction):
    """The back of the hair takes the colour the photo shows on the visible hair, not the network's."""
    g, _, _ = prediction
    inputs = template_inputs(demo)
    dense, parents = densify(g, 16384)
    regions = inputs["regions"][parents]
    vm = orbit_viewmats([0.0], [0.0], HEAD_CAMERA_RADIUS)[0]
    blond = torch.tensor([0.85, 0.7, 0.35])
    image = blond[:, None, None].expand(3, 64, 64).clone()
    colour, weight = photo_colours(dense, vm, image, torch.ones(1, 64, 64))
    painted, seen = project_appearance(dense, colour, weight, 0.5, regions)  # every region repainted
    back = (seen < 0.05) & (regions == 1) & (dense.means[:, 2] < -0.03)  # scalp Gaussians behind the head
    assert int(back.sum()) > 500
    # Measured: the back's mean colour 0.021 from the photo's (bound 0.1), the network's own 0.49 away (its dark
    # hair; bound 0.2).
    assert float((painted.rgb[back].mean(0) - blond).abs().max()) < 0.1
    assert float((dense.rgb[back].mean(0) - blond).abs().max()) > 0.2
    # Regions left out of ``repaint`` (the scalp, in FitConfig's default) keep the network's colours where
    # neither the photo nor the mirror sees, and still take the photo's where it does.
    kept, seen_again = project_appearance(dense, colour, weight, 0.5, regions, repaint=[FACE, EARS, NECK])
    assert torch.equal(seen, seen_again)
    assert float((kept.rgb[back] - dense.rgb[back]).abs().max()) < 0.05  # seen < 0.05: at most 5% photo
    face = (seen < 0.05) & (regions == FACE)
    assert int(face.sum()) > 100 and torch.allclose(kept.rgb[face], painted.rgb[face])
    front = seen > 0.5
    # Measured: the seen front's mean colour 0.13 from the photo's, the network's 0.37 (bound: half of it).
    gap = [float((g.rgb[front].mean(0) - blond).abs().max()) for g in (kept, dense)]
    assert int(front.sum()) > 500 and gap[0] < 0.5 * gap[1], gap
    with pytest.raises(ValueError, match="repaint_regions"):
        FitConfig(repaint_regions=("hair",))


def test_an_unseen_neck_takes_the_colour_the_photo_shows_at_its_height(demo, prediction):
    """What a photo shows of a neck is skin under the chin and a collar lower down: the back of the neck takes
    the colour the photo shows at its height, not one median of both."""
    g, _, _ = prediction
    dense, parents = densify(g, 16384)
    regions = template_inputs(demo)["regions"][parents]
    skin, collar = torch.tensor([0.8, 0.6, 0.5]), torch.tensor([0.25, 0.28, 0.35])
    neck, front, y = regions == NECK, dense.means[:, 2] > 0, dense.means[:, 1]
    low = y < y[neck].median()
    colour = torch.where((neck & low)[:, None], collar, skin)
    weight = torch.where(front, 5.0, 0.0)  # the front half well seen, the back not at all
    painted, seen = project_appearance(dense, colour, weight, 0.5, regions, repaint=[FACE, EARS, NECK])
    back = neck & (seen < 0.05)
    top, bottom = back & (y > y[neck].quantile(0.75)), back & (y < y[neck].quantile(0.25))
    assert int(top.sum()) > 50 and int(bottom.sum()) > 50
    gaps = [float((painted.rgb[top].mean(0) - skin).abs().max()),
            float((painted.rgb[bottom].mean(0) - collar).abs().max())]
    # Measured: 0.004 and 0.002 (one median of the whole neck: 0.55 from the collar); bound 0.1.
    assert max(gaps) < 0.1, gaps


def test_shading_kept_is_the_share_of_the_networks_variation_the_photo_bears_out():
    """The least-squares slope of the photo's colours on the network's over the seen Gaussians, in [0, 1]."""
    torch.manual_seed(0)
    pred = torch.rand(500, 3)
    seen = torch.ones(500)
    noise = 0.01 * torch.randn(500, 3)
    half = 0.4 + 0.7 * (pred - pred.mean(0)) + noise
    assert abs(shading_kept(pred, half, seen) - 0.7) < 0.02  # measured 0.70
    assert shading_kept(pred, 0.5 - (pred - pred.mean(0)), seen) == 0.0  # anti-correlated: none of it
    assert shading_kept(pred, 3 * pred, seen) == 1.0  # never more than the network's own
    assert shading_kept(pred, half, torch.where(torch.arange(500) < 15, 1.0, 0.0), 0.25) == 0.25  # too few seen


def test_unseen_skin_keeps_only_the_shading_the_photo_bears_out(demo, prediction):
    """Where the photo shows the face flat, the unseen face is flat too; where the photo shows the network's own
    shading, the unseen face keeps it (on a real photo the network's eyes and mouth are not the person's, and
    the seen part of the face says so)."""
    g, _, _ = prediction
    dense, parents = densify(g, 16384)
    regions = template_inputs(demo)["regions"][parents]
    face, front = regions == FACE, dense.means[:, 2] > dense.means[regions == FACE, 2].median()
    weight = torch.where(front, 5.0, 0.0)  # the front of the face well seen, the rest not at all
    skin = torch.tensor([0.8, 0.6, 0.5])
    spread = []
    for colour in (skin.expand(len(dense), 3), dense.rgb):
        painted, seen = project_appearance(dense, colour, weight, 0.5, regions, repaint=[FACE, EARS, NECK])
        unseen = face & (seen < 0.05)
        assert int(unseen.sum()) > 100
        spread.append(float((painted.rgb[unseen] - painted.rgb[unseen].mean(0)).abs().mean()))
    network = float((dense.rgb[unseen] - dense.rgb[unseen].mean(0)).abs().mean())
    # Measured: 0.0000 flat, 0.059 (the network's own spread, 0.059) when the photo shows it. A fixed half of
    # the network's shading, as before, gives half of it in both, which fails both bounds.
    assert spread[0] < 0.25 * network and spread[1] > 0.75 * network, (spread, network)


def test_banded_colour_steps_nowhere():
    """Colours by height go linearly between the bands' middles (a hard step at each band's edge showed as a
    stripe round the neck) and stay constant beyond the outer ones; with no band seen, the default."""
    height = torch.linspace(0, 1, 401)
    colour = (height >= 0.5).float()[:, None].expand(-1, 3)
    out = banded_colour(colour, torch.ones(401), height, 4, torch.full((3,), 0.3))[:, 0]
    middles = torch.tensor([0.125, 0.375, 0.625, 0.875])
    assert torch.allclose(out[height <= 0.375], torch.zeros(1)) and torch.allclose(out[height >= 0.625], torch.ones(1))
    ramp = (height > 0.38) & (height < 0.62)
    assert torch.allclose(out[ramp], (height[ramp] - middles[1]) / 0.25, atol=0.01)
    assert bool((out[1:] >= out[:-1]).all())
    none_seen = banded_colour(colour, torch.zeros(401), height, 4, torch.full((3,), 0.3))
    assert torch.allclose(none_seen, torch.full((401, 3), 0.3))


def test_photo_colours_are_the_pixels_each_gaussian_draws(prediction):
    g = prediction[0]
    image = torch.zeros(3, 64, 64)
    image[0, :, :32] = 1.0  # left half red, right half blue
    image[2, :, 32:] = 1.0
    mask = torch.ones(1, 64, 64)
    vm = orbit_viewmats([0.0], [0.0], HEAD_CAMERA_RADIUS)[0]
    colour, weight = photo_colours(g, vm, image, mask)
    cam_x = (g.means @ vm[0, :3] + vm[0, 3])
    seen = weight > 0.5
    assert 0.1 < float(seen.float().mean()) < 0.7  # the front is seen, the back is not
    # Seen Gaussians well left of the image centre are red, well right of it blue.
    left, right = seen & (cam_x < -0.03), seen & (cam_x > 0.03)
    assert left.any() and right.any()
    assert float(colour[left, 0].mean()) > 0.9 and float(colour[right, 2].mean()) > 0.9
    assert float(weight[~seen].max()) <= 0.5


# -- the fit --------------------------------------------------------------------------------------------------
def test_a_few_steps_lower_the_input_view_loss_within_the_bounds(demo, prediction):
    g, image, mask = prediction
    inputs = template_inputs(demo)
    # the face's width left alone (it narrows this head by ~6% before densifying), so that the bounds below are
    # measured from where densify puts the children
    cfg = FitConfig(steps=8, size=64, num_gaussians=16384, max_face_narrowing=0.0)
    result = fit_to_photo(g, image, mask, cfg, pose=Pose(0.0, 0.0), **inputs)
    assert len(result.gaussians) == 16384 and len(result.losses) == 9
    assert result.geometry_fitted and not result.warnings and result.silhouette_iou > 0.8  # measured 0.95
    before, after = result.input_l1
    # Measured: L1 0.018 -> 0.0045 (ratio 0.25; the bound 0.85).
    assert after < 0.85 * before
    assert result.losses[-1] < result.losses[0]
    # Positions stay within the position head's anchored range; outside the neck (free to reach the shoulders)
    # they move along their template normal within normal_bound and across it within tangent_bound, and no
    # scale grows past max_scale_growth.
    start, parents = densify(g, 16384)
    anchors, s_max = inputs["anchors"], inputs["s_max"]
    fitted = result.gaussians
    assert float((fitted.means - anchors[parents]).abs().max()) <= s_max * (1 + 1e-5)
    bounded = inputs["regions"][parents] != NECK
    d = (fitted.means - start.means)[bounded]
    normal = inputs["normals"][parents][bounded]
    along = (d * normal).sum(-1)
    across = (d - along[:, None] * normal).norm(dim=-1)
    assert float(along.abs().max()) <= cfg.normal_bound + 1e-5 and float(across.max()) <= cfg.tangent_bound + 1e-5
    assert float(along.abs().max()) > 0.2 * cfg.normal_bound  # they do move
    growth = (fitted.log_scales - start.log_scales)[bounded]
    assert float(growth.max()) <= math.log(cfg.max_scale_growth) + 1e-5


def test_densified_gaussians_move_with_their_parent(demo, prediction):
    """One move per predicted Gaussian carries its children (FitConfig.parent_motion); before, each child moved
    on its own. The head's height and widths are left alone so that the children start where densify puts them."""
    g, image, mask = prediction
    inputs = template_inputs(demo)
    start, parents = densify(g, 16384)
    bounded = inputs["regions"][parents] != NECK  # the neck's Gaussians move on their own either way
    spread, moved = {}, {}
    for tied in (True, False):
        cfg = FitConfig(steps=8, size=64, num_gaussians=16384, parent_motion=tied, max_height_change=0.0,
                        max_width_change=0.0, max_face_narrowing=0.0)
        d = fit_to_photo(g, image, mask, cfg, pose=Pose(0.0, 0.0), **inputs).gaussians.means - start.means
        mean = torch.zeros(len(g), 3).index_add_(0, parents, d) / (len(start) // len(g))
        spread[tied] = float((d - mean[parents])[bounded].norm(dim=-1).max())
        moved[tied] = float(mean[parents][bounded].norm(dim=-1).max())
    # Measured: children of one parent at most 6e-9 m from their mean move tied (float rounding), 9.5 mm on
    # their own; the parents' mean moves reached 8.7 mm tied and 7.4 mm on their own (the normal bound: 12).
    assert spread[True] < 1e-5 and spread[False] > 1e-3
    assert moved[True] > 0.3 * FitConfig.normal_bound and moved[False] > 0.3 * FitConfig.normal_bound


def test_the_neck_reaches_for_shoulders_only_when_the_matte_has_them(demo, prediction):
    g, image, mask = prediction
    inputs = template_inputs(demo)
    cfg = FitConfig(steps=10, size=64, num_gaussians=16384)
    # A synthetic head ends at its neck, as the template does: nothing for the neck to reach.
    plain = fit_to_photo(g, image, mask, cfg, pose=Pose(0.0, 0.0), **inputs)
    assert plain.matte_outside < 0.6 * cfg.free_min_outside and not plain.free_regions_freed  # measured 0.02
    # The same photo with shoulders: a band of grey clothes across the bottom of the frame.
    shoulders = mask.clone()
    shoulders[:, int(0.8 * mask.shape[1]):] = 1.0
    dressed = torch.where(shoulders > mask, torch.full_like(image, 0.4), image)
    fitted = fit_to_photo(g, dressed, shoulders, cfg, pose=Pose(0.0, 0.0), **inputs)
    assert fitted.matte_outside > 1.5 * cfg.free_min_outside and fitted.free_regions_freed  # measured 0.3
    meta = fitted.metadata(cfg)
    assert meta["free_regions_freed"] and meta["matte_outside"] == round(fitted.matte_outside, 4)
    # Freed, the neck's Gaussians leave the bounds to cover the clothes; held, they stay within them.
    start, parents = densify(g, 16384)
    neck = inputs["regions"][parents] == NECK
    moved = [float((r.gaussians.means - start.means)[neck].norm(dim=-1).max()) for r in (plain, fitted)]
    bound = math.hypot(cfg.normal_bound, cfg.tangent_bound)
    # Measured: 9.5 mm held (the bound 12.4 mm), 30 mm freed (asserted: > 1.5x the bound).
    assert moved[0] <= bound + 1e-5 and moved[1] > 1.5 * bound
    # Only the neck's front and sides are freed: its back, which the photo does not show, stays within the bounds
    # (freed, it reached round for the clothes and showed them from behind as streaks). Measured: 0.4 mm; 18 mm
    # with the whole neck freed (free_min_facing=-1).
    centre = torch.linalg.inv(Pose(0.0, 0.0).viewmat)[:3, 3]
    facing = (inputs["normals"][parents] * torch.nn.functional.normalize(centre - start.means, dim=-1)).sum(-1)
    back = neck & (facing <= cfg.free_min_facing)
    assert int(back.sum()) > 100
    assert float((fitted.gaussians.means - start.means)[back].norm(dim=-1).max()) <= bound + 1e-5


def test_fit_keeps_the_unseen_side_of_the_head(demo, prediction):
    """The geometry seen from the back stays the network's: the silhouette barely changes."""
    g, image, mask = prediction
    cfg = FitConfig(steps=8, size=64, num_gaussians=16384)
    result = fit_to_photo(g, image, mask, cfg, pose=Pose(0.0, 0.0), **template_inputs(demo))
    start, _ = densify(g, 16384)
    back = orbit_viewmats([180.0, 90.0], [0.0, 0.0], HEAD_CAMERA_RADIUS)
    K = camera_K(64).expand(2, 3, 3)
    with torch.no_grad():
        a = rasterize(start, back, K, 64, 64).alpha
        b = rasterize(result.gaussians, back, K, 64, 64).alpha
    # Measured mean |alpha difference| 0.016 (back) and 0.006 (profile): bound 0.04.
    assert float((a - b).abs().mean()) < 0.04


def test_the_photo_seen_from_beside_its_camera_shapes_a_head_that_holds_up_nearby(demo, prediction):
    """FitConfig.jitter_weight: with the photo also the target of its camera turned 2 degrees either way, the head
    fitted from a held-out synthetic head's frontal view renders closer to the true head 12 and 20 degrees round
    (what the single view's steps paint for one camera slides off there). Measured (20 steps at 112 px, 16,384
    Gaussians): 19.12 -> 19.41 dB mean over the four views, each one up by 0.21-0.38 dB, on an AVX-512 EPYC; on an
    AVX2-only one 19.13-19.14 -> 19.44-19.46, each up by 0.17-0.44, at one and two threads; bounds +0.1 dB on the
    mean and no view down by more than 0.1 dB."""
    g, image, mask = prediction
    pose = Pose(0.0, 0.0, "given")
    yaws = (-20.0, -12.0, 12.0, 20.0)
    truth = torch.stack([synth_view(TEST_SUBJECTS[0], y)[0] for y in yaws])
    psnr = {}
    for weight in (0.0, 0.5):
        cfg = FitConfig(steps=20, size=112, num_gaussians=16384, jitter_deg=2.0, jitter_weight=weight)
        fitted = fit_to_photo(g, image, mask, cfg, pose=pose, **template_inputs(demo)).gaussians
        with torch.no_grad():
            rgb = rasterize(fitted, turned_viewmats(pose.viewmat, yaws), camera_K(128).expand(4, 3, 3), 128, 128,
                            background=1.0).rgb.permute(0, 3, 1, 2)
        psnr[weight] = -10 * torch.log10((rgb - truth).square().mean((1, 2, 3)))
    gain = psnr[0.5] - psnr[0.0]
    assert float(gain.mean()) > 0.1 and float(gain.min()) > -0.1, gain


# -- test-time tuning of the network ----------------------------------------------------------------------------
def test_tuning_the_network_improves_the_views_it_was_not_tuned_on(demo):
    """Tuned on a held-out synthetic head's frontal view (its true camera), the network's head comes closer to
    the truth from the side and from behind, and the caller's model is left as it was."""
    image, mask = synth_view(TEST_SUBJECTS[2], 0.0)
    before = {k: v.clone() for k, v in demo.state_dict().items()}
    cfg = FitConfig(tune_steps=30)
    tuned, losses = tune_network(demo, image[None], mask[None], image, mask, Pose(0.0, 0.0, "given").viewmat, cfg)
    assert all(torch.equal(v, demo.state_dict()[k]) for k, v in before.items())
    assert len(losses) == 31 and losses[-1] < losses[0]
    with torch.no_grad():
        g = demo(image[None], mask[None])[0]
    gains = []
    for yaw in (0.0, 30.0, 90.0, 180.0):
        truth, _ = synth_view(TEST_SUBJECTS[2], yaw)
        vm = orbit_viewmats([yaw], [0.0], HEAD_CAMERA_RADIUS)
        with torch.no_grad():
            renders = [rasterize(x, vm, camera_K(128)[None], 128, 128, background=1.0).rgb[0].permute(2, 0, 1)
                       for x in (g, tuned)]
        gains.append(float(psnr(renders[1][None], truth[None]) - psnr(renders[0][None], truth[None])))
    # Measured: +2.24 dB at the input view, +0.85 at 30 degrees, -0.08 at the profile, +2.21 at the back (the
    # bounds: above 1 at the input view, a mean above 0.4 over the three unseen views (0.99), none below -0.5).
    assert gains[0] > 1.0 and sum(gains[1:]) / 3 > 0.4 and min(gains) > -0.5, gains


def test_tuning_keeps_off_the_shoulders(demo, prediction):
    """The matte's clothes below the head do not pull the network's neck over them: beyond the untuned head's
    silhouette the tuned head's alpha stays the untuned one's, and whether the Gaussian fit frees the neck is
    read off the untuned head."""
    g, image, mask = prediction
    shoulders = mask.clone()
    shoulders[:, int(0.8 * mask.shape[1]):] = 1.0
    dressed = torch.where(shoulders > mask, torch.full_like(image, 0.4), image)
    pose = Pose(0.0, 0.0, "given")
    tuned, _ = tune_network(demo, image[None], mask[None], dressed, shoulders, pose.viewmat, FitConfig(tune_steps=30))
    K = camera_K(128)[None]
    with torch.no_grad():
        alphas = [rasterize(x, pose.viewmat[None], K, 128, 128).alpha[0, ..., 0] for x in (g, tuned)]
    band = (shoulders[0] > mask[0]) & (alphas[0] < 0.5)
    assert int(band.sum()) > 500
    grown = float((alphas[1] - alphas[0])[band].mean())
    # Measured: +0.01 mean alpha over the clothes the head did not cover; +0.08 with the guard alone
    # (tune_novel_weight=0), +0.33 with neither (and tune.TUNE_MARGIN = 1). The bound 0.15.
    assert grown < 0.15, grown
    cfg = FitConfig(steps=4, tune_steps=4, size=64, num_gaussians=16384)
    result = fit_network(demo, image[None], mask[None], dressed, shoulders, cfg, pose=pose)
    assert result.free_regions_freed and len(result.tune_losses) == 5
    assert result.metadata(cfg)["tune_steps"] == 4


def test_fit_network_without_tuning_is_the_gaussian_fit(demo, prediction):
    g, image, mask = prediction
    cfg = FitConfig(steps=4, tune_steps=0, size=64, num_gaussians=16384)
    a = fit_network(demo, image[None], mask[None], image, mask, cfg, pose=Pose(0.0, 0.0))
    b = fit_to_photo(g, image, mask, cfg, pose=Pose(0.0, 0.0), **template_inputs(demo))
    assert not a.tune_losses and torch.allclose(a.gaussians.means, b.gaussians.means, atol=1e-6)


def test_tuning_alone_gives_the_tuned_networks_gaussians(demo, prediction):
    g, image, mask = prediction
    result = fit_network(demo, image[None], mask[None], image, mask, FitConfig(steps=0, tune_steps=3),
                         pose=Pose(0.0, 0.0, "given"))
    assert len(result.gaussians) == len(g) and len(result.tune_losses) == 4 and result.steps == 0
    assert float((result.gaussians.means - g.means).abs().max()) > 1e-4  # tuned, not densified, not fitted


def test_nan_while_tuning_is_a_clear_error(demo, prediction, monkeypatch):
    from perchead.inference import tune as tune_module

    g, image, mask = prediction
    real = tune_module.rasterize

    def broken(*args, **kwargs):
        out = real(*args, **kwargs)
        return type(out)(**{**out.__dict__, "rgb": out.rgb * float("nan")}) if torch.is_grad_enabled() else out

    monkeypatch.setattr(tune_module, "rasterize", broken)
    with pytest.raises(FitDivergedError, match="tuning the network diverged at step 0"):
        tune_network(demo, image[None], mask[None], image, mask, Pose(0.0, 0.0).viewmat, FitConfig(tune_steps=3))


def frontal_head_at_224(demo) -> tuple:
    """The demo's head of a held-out synthetic subject seen from the front (its 128 px input), and that view at
    the fit's 224 px: what the midline tests read Face Mesh on."""
    image, mask = synth_view(TEST_SUBJECTS[0], 0.0, size=224)
    small, small_mask = synth_view(TEST_SUBJECTS[0], 0.0, size=128)
    with torch.no_grad():
        return demo(small[None], small_mask[None])[0], image, mask


def test_photo_midline_says_where_the_photos_face_lands_on_the_head(demo):
    """The photo's face midline (Face Mesh's midline landmarks) on the demo's head of a held-out frontal synthetic
    head: on the head's midline from the true camera, to one side when the camera is 15 or 25 degrees off (as on
    turned real photos). Measured on three test subjects at 128 and 224 px: -0.4 to 1.1 mm at the true camera;
    +21.5 to +24.7 / -20.0 to -22.1 mm at +-15 degrees; +33.8 to +36.4 mm at +25. Bounds: 5 mm, 12 mm, 25 mm."""
    g, image, mask = frontal_head_at_224(demo)
    at = {yaw: photo_midline(g, Pose(yaw, 0.0).viewmat, image, mask) for yaw in (0.0, 15.0, -15.0, 25.0)}
    assert None not in at.values(), at
    assert abs(at[0.0]) < 0.005 and at[15.0] > 0.012 and at[-15.0] < -0.012 and at[25.0] > 0.025, at
    assert photo_midline(g, Pose(0.0, 0.0).viewmat, torch.ones(3, 224, 224), torch.zeros(1, 224, 224)) is None


@pytest.mark.parametrize("pixels", [12, -12])
def test_align_midline_moves_the_camera_under_an_off_centre_face(demo, pixels):
    """A crop that puts the face off the head's centre (as an eye-centred crop of a turned face does): the
    frontal synthetic head moved 12 px sideways at 224 px. Moving the camera sideways brings the photo's midline
    back onto the head's. Measured on three test subjects: midline 15.9-18.7 mm off before, within 1.3 mm after,
    the camera moved 18.7-21.2 mm the same way. Bounds: 10 mm before, 3 mm after, 12-30 mm moved."""
    g, image, mask = frontal_head_at_224(demo)
    image, mask = torch.roll(image, pixels, dims=-1), torch.roll(mask, pixels, dims=-1)
    side = 1 if pixels > 0 else -1
    before = photo_midline(g, Pose(0.0, 0.0).viewmat, image, mask)
    pose, after = align_midline(g, Pose(0.0, 0.0, "landmarks"), image, mask, max_shift=0.06)
    assert side * before > 0.010 and abs(after) < 0.003, (before, after)
    assert 0.012 < side * pose.shift_m < 0.030 and pose.yaw_deg == 0.0, pose
    assert torch.allclose(pose.viewmat[0, 3], Pose(0.0, 0.0).viewmat[0, 3] + pose.shift_m)
    assert pose.metadata(224)["shift_mm"] == round(pose.shift_m * 1000, 2)
    # the bound holds, and a given camera is never moved by the fit
    assert abs(align_midline(g, Pose(0.0, 0.0, "landmarks"), image, mask, max_shift=0.005)[0].shift_m) <= 0.005
    result = fit_to_photo(g, image, mask, FitConfig(steps=1, size=224, num_gaussians=4096),
                          pose=Pose(0.0, 0.0, "given"), **template_inputs(demo))
    assert result.pose.shift_m == 0.0


def head_and_matte_tops(g, mask: torch.Tensor) -> tuple[float, float]:
    """Median top row of the head's silhouette and of ``mask`` [1, 224, 224] over the central half of the head's
    width, from the frontal camera."""
    with torch.no_grad():
        alpha = rasterize(g, Pose(0.0, 0.0).viewmat[None], camera_K(224)[None], 224, 224).alpha
    head = alpha[0, ..., 0] > 0.5
    cols = torch.nonzero(head.any(0))[:, 0]
    lo, hi = int(cols.min()), int(cols.max())
    lo, hi = lo + (hi - lo) // 4, hi - (hi - lo) // 4
    rows = torch.arange(224, dtype=torch.float32)[:, None]
    tops = [torch.where(m[:, lo:hi + 1], rows, 224.0).amin(0).median() for m in (head, mask[0] > 0.5)]
    return float(tops[0]), float(tops[1])


def test_the_head_above_the_brows_meets_the_top_of_the_matte(demo):
    """The network gives every head one skull height; above a short-haired man's hair the fit left a transparent
    arc under it (Obama 2). On a held-out synthetic head seen from the front: its own matte changes nothing
    (tops within a pixel); the matte's top 12 px cleared (hair lower than the skull) squashes the head above the
    brows until the tops meet, and a matte grown 8 px up stretches it; the face below the brows and the anchors
    below them stay. Measured on three test subjects: tops 9-10 px apart before the squash and 0-2 after (the
    scale clamped at 0.85), 8 px apart before the stretch and 0 after (scale 1.14). Bounds: 3 px after."""
    g, image, mask = frontal_head_at_224(demo)
    t = template_inputs(demo)
    vm, K = Pose(0.0, 0.0).viewmat, camera_K(224)
    same, anchors, scale = fit_head_height(g, t["anchors"], t["regions"], vm, K, mask[0], 0.15, 0.6)
    assert scale == 1.0 and same is g and anchors is t["anchors"]

    rows = torch.arange(224)[:, None]
    top = int(torch.nonzero(mask[0] > 0.5)[:, 0].min())
    lower = mask * (rows >= top + 12).float()
    squashed, anchors, scale = fit_head_height(g, t["anchors"], t["regions"], vm, K, lower[0], 0.15, 0.6)
    before, after = head_and_matte_tops(g, lower), head_and_matte_tops(squashed, lower)
    assert before[1] - before[0] > 6 and abs(after[1] - after[0]) <= 3 and 0.85 <= scale < 0.95, (before, after)
    pivot = float(t["anchors"][t["regions"] == FACE, 1].quantile(0.75))
    below, anchors_below = g.means[:, 1] < pivot, t["anchors"][:, 1] < pivot
    assert torch.equal(squashed.means[below], g.means[below])
    assert torch.equal(anchors[anchors_below], t["anchors"][anchors_below])
    assert float(squashed.means[:, 1].max()) < float(g.means[:, 1].max()) - 0.005

    higher = torch.maximum(mask, torch.roll(mask, -8, dims=1))
    stretched, _, scale = fit_head_height(g, t["anchors"], t["regions"], vm, K, higher[0], 0.15, 0.6)
    after = head_and_matte_tops(stretched, higher)
    assert scale > 1.05 and abs(after[1] - after[0]) <= 3, after
    # a matte that is not this head (the silhouette IoU below the bound) changes nothing, nor does 0
    assert fit_head_height(g, t["anchors"], t["regions"], vm, K, torch.ones(224, 224), 0.15, 0.6)[2] == 1.0
    assert fit_head_height(g, t["anchors"], t["regions"], vm, K, lower[0], 0.0, 0.6)[2] == 1.0
    result = fit_to_photo(g, image, lower, FitConfig(steps=1, size=224, num_gaussians=4096),
                          pose=Pose(0.0, 0.0, "given"), **t)
    assert result.height_scale < 0.95 and result.metadata(FitConfig())["height_scale"] == round(result.height_scale, 4)


def upper_head_widths(g, mask: torch.Tensor) -> tuple[float, float]:
    """Median width (pixels) of the head's silhouette and of ``mask`` [224, 224] over the rows from 25% to 45% of
    the way down the head's silhouette (the skull above the brows, no ears), from the frontal camera."""
    with torch.no_grad():
        alpha = rasterize(g, Pose(0.0, 0.0).viewmat[None], camera_K(224)[None], 224, 224).alpha
    head = alpha[0, ..., 0] > 0.5
    rows = torch.nonzero(head.any(1))[:, 0]
    top, bottom = int(rows.min()), int(rows.max())
    band = range(top + (bottom - top) // 4, top + 45 * (bottom - top) // 100)

    def width(m: torch.Tensor) -> float:
        cols = [torch.nonzero(m[y])[:, 0] for y in band]
        return float(torch.tensor([float(c.max() - c.min() + 1) for c in cols if len(c)]).median())

    return width(head), width(mask > 0.5)


def test_the_skull_meets_the_width_of_the_matte_at_the_temples(demo):
    """The network gives every head about one skull size: wider than a short-haired man's (its outline stood
    behind his face at +-45 degrees as a second head) and narrower than a bob. On a held-out synthetic head seen
    from the front, with its own silhouette as the matte nothing changes; with the matte 6 px narrower on either
    side the skull is narrowed towards it, with it 5 px wider widened; the face below its lower quarter and the
    anchors there stay, and the depth behind the face shrinks with the width. The scale moves the Gaussians'
    centres, not their sizes, so about a third of the gap stays. Measured on the skull above the brows (125 px
    wide here): 12 px apart before the narrowing and 4 after (scale 0.89), 10 before the widening and 3 after (scale
    1.09). Bounds: at most half the gap after."""
    g, image, _ = frontal_head_at_224(demo)
    t = template_inputs(demo)
    vm, K = Pose(0.0, 0.0).viewmat, camera_K(224)
    with torch.no_grad():
        own = rasterize(g, vm[None], K[None], 224, 224).alpha[0, ..., 0]
    same, anchors, scale = fit_head_width(g, t["anchors"], t["regions"], vm, K, own, 0.15, 0.6)
    assert scale == 1.0 and same is g and anchors is t["anchors"]

    matte = (own > 0.5).float()
    narrower = matte * torch.roll(matte, 6, dims=1) * torch.roll(matte, -6, dims=1)
    narrowed, anchors, scale = fit_head_width(g, t["anchors"], t["regions"], vm, K, narrower, 0.15, 0.6)
    before, after = upper_head_widths(g, narrower), upper_head_widths(narrowed, narrower)
    assert before[0] - before[1] > 8 and abs(after[0] - after[1]) <= (before[0] - before[1]) / 2, (before, after)
    assert 0.85 <= scale < 0.95
    low = float(t["anchors"][t["regions"] == FACE, 1].quantile(0.25))
    below, anchors_below = g.means[:, 1] < low, t["anchors"][:, 1] < low
    assert torch.equal(narrowed.means[below], g.means[below])
    assert torch.equal(anchors[anchors_below], t["anchors"][anchors_below])
    depth = float(g.means[:, 2].max() - g.means[:, 2].min())
    assert float(narrowed.means[:, 2].max() - narrowed.means[:, 2].min()) < depth - 0.005

    wider = torch.maximum(torch.roll(matte, 5, dims=1), torch.roll(matte, -5, dims=1))
    widened, _, scale = fit_head_width(g, t["anchors"], t["regions"], vm, K, wider, 0.15, 0.6)
    before, after = upper_head_widths(g, wider), upper_head_widths(widened, wider)
    assert before[1] - before[0] > 6 and abs(after[0] - after[1]) <= (before[1] - before[0]) / 2, (before, after)
    assert 1.04 < scale <= 1.15
    # a matte that is not this head (the silhouette IoU below the bound) changes nothing, nor does 0
    assert fit_head_width(g, t["anchors"], t["regions"], vm, K, torch.ones(224, 224), 0.15, 0.6)[2] == 1.0
    assert fit_head_width(g, t["anchors"], t["regions"], vm, K, narrower, 0.0, 0.6)[2] == 1.0
    result = fit_to_photo(g, image, narrower[None], FitConfig(steps=1, size=224, num_gaussians=4096),
                          pose=Pose(0.0, 0.0, "given"), **t)
    assert result.width_scale < 0.95 and result.metadata(FitConfig())["width_scale"] == round(result.width_scale, 4)


def test_the_face_meets_the_width_of_the_photos_face_oval(demo):
    """The face's width fitted to Face Mesh's face oval: on a held-out synthetic head seen from the front, the
    oval's landmarks moved 10% toward the face's centre give a narrower face than the oval as found, moved 10%
    out a wider one (where widening is allowed; the fit only narrows); what lies behind the ears' depth or above
    the brows stays; nothing changes when it is off, without landmarks, or through an untrusted matte. Measured:
    scales 0.80 (the bound), 0.94 and 1.075. Bounds: 0.05 apart either way, within 1 +- 0.2."""
    g, image, mask = frontal_head_at_224(demo)
    t = template_inputs(demo)
    vm, K = Pose(0.0, 0.0).viewmat, camera_K(224)
    landmarks = photo_landmarks(image, mask)
    assert landmarks is not None
    centre = landmarks[:, 0].mean()

    def fitted(k: float, narrowing: float = 0.2, widening: float = 0.2, matte: torch.Tensor = mask[0]):
        moved = landmarks.copy()
        moved[:, 0] = centre + k * (landmarks[:, 0] - centre)
        return fit_face_width(g, t["anchors"], t["regions"], vm, K, matte, moved, narrowing, widening, 0.6)

    narrowed, anchors, narrow = fitted(0.9)
    own = fitted(1.0)[2]
    wide = fitted(1.1)[2]
    assert 0.8 <= narrow < own - 0.05 and own + 0.05 < wide <= 1.2, (narrow, own, wide)
    face = t["regions"] == FACE
    assert float(narrowed.means[face, 0].std()) < float(g.means[face, 0].std()) - 0.002
    ears = float(t["anchors"][t["regions"] == EARS, 2].median())
    brow = float(t["anchors"][face, 1].quantile(0.75))
    stay = (g.means[:, 2] <= ears) | (g.means[:, 1] >= brow)
    assert int(stay.sum()) > 1000 and torch.equal(narrowed.means[stay], g.means[stay])
    assert torch.equal(narrowed.means[:, 1:], g.means[:, 1:]) and anchors is not t["anchors"]
    assert fitted(1.1, widening=0.0)[0] is g  # the fit's default: never wider
    assert fitted(0.9, narrowing=0.0, widening=0.0)[0] is g
    assert fit_face_width(g, t["anchors"], t["regions"], vm, K, mask[0], None, 0.2, 0.2, 0.6)[0] is g
    assert fitted(0.9, matte=torch.ones(224, 224))[0] is g
    result = fit_to_photo(g, image, mask, FitConfig(steps=1, size=224, num_gaussians=4096),
                          pose=Pose(0.0, 0.0, "given"), **t)
    assert result.face_width_scale < 0.99
    assert result.metadata(FitConfig())["face_width_scale"] == round(result.face_width_scale, 4)
    off = fit_to_photo(g, image, mask, FitConfig(steps=1, size=224, num_gaussians=4096, max_face_narrowing=0.0),
                       pose=Pose(0.0, 0.0, "given"), **t)
    assert off.face_width_scale == 1.0
    with pytest.raises(ValueError, match="max_face_narrowing"):
        FitConfig(max_face_narrowing=1.0)


def test_mirror_through_a_plane_beside_the_midline(demo):
    """Mirrored through x = 2 cm instead of the midline, the face's points (the front, within 5 cm of the
    midline) go to points up to 4 cm (twice the plane's offset) farther along x: less where the face curves
    back, as the nearest point to a reflection off the surface is. Measured: median 33.6 mm; bounds 25-45 mm."""
    anchors = demo.template.points()[0]
    face = (anchors[:, 2] > 0.05) & (anchors[:, 0].abs() < 0.05)
    shift = anchors[mirror_index(anchors, plane_x=0.02), 0] - anchors[mirror_index(anchors), 0]
    assert int(face.sum()) > 200 and 0.025 < float(shift[face].median()) < 0.045
    assert torch.equal(mirror_index(anchors, plane_x=0.0), mirror_index(anchors))


def test_a_turned_head_fitted_from_its_35_degree_view_has_one_face(demo):
    """Issue 28: the old fit's mirrored photo painted a second face beside the first on turned photos. A
    held-out synthetic head seen at 35 degrees of yaw, fitted from that view, is rendered from its input camera
    and from that camera turned 30 degrees toward the front (the view that showed two faces): MediaPipe's face
    detector finds exactly one face in each. Measured: one in each with this fit; the fit before issue 28 gave
    one and none (its +30 view was no face to the detector)."""
    from perchead.preprocess.detect import detect_faces

    image, mask = synth_view(TEST_SUBJECTS[1], 35.0, size=256)
    small, small_mask = synth_view(TEST_SUBJECTS[1], 35.0, size=128)
    with torch.no_grad():
        g = demo(small[None], small_mask[None])[0]
    pose = Pose(35.0, 0.0, "given")
    cfg = FitConfig(steps=20, size=128, num_gaussians=16384)
    fitted = fit_to_photo(g, image, mask, cfg, pose=pose, **template_inputs(demo)).gaussians
    vms = turned_viewmats(pose.viewmat, (0.0, 30.0))
    with torch.no_grad():
        renders = rasterize(fitted, vms, camera_K(256).expand(2, 3, 3), 256, 256, background=1.0).rgb
    for turn, rgb in zip((0, 30), renders, strict=True):
        faces, _ = detect_faces((rgb.clamp(0, 1).numpy() * 255).round().astype("uint8"), ("mediapipe-full",))
        assert len(faces) == 1, (turn, [f.box for f in faces])


def test_trust_adam_is_torchs_adam_with_each_rows_step_scaled():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(6, 3, generator=gen)
    trust = torch.tensor([1.0, 0.5, 0.0, 0.25, 1.0, 0.75])
    ours, ref = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt = TrustAdam([(ours, 0.1, trust)])
    ref_opt = torch.optim.Adam([ref], lr=0.1, eps=1e-15)
    for _ in range(5):
        target = torch.randn(6, 3, generator=gen)
        opt.zero_grad()
        ref.grad = None
        for p in (ours, ref):
            ((p - target) ** 3).abs().sum().backward()
        before = ref.detach().clone()
        opt.step()
        ref_opt.step()
        with torch.no_grad():  # torch's step, each row's scaled by its trust, as the fit took it before
            ref.copy_(before + trust[:, None] * (ref - before))
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(ours[2], start[2])  # no trust, no step
    assert not torch.allclose(ours[0], start[0], atol=1e-2)


def test_nan_during_the_fit_is_a_clear_error(prediction, monkeypatch):
    g, image, mask = prediction
    monkeypatch.setattr(fit_module, "view_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FitDivergedError, match="diverged at step 0"):
        fit_to_photo(g, image, mask, FitConfig(steps=3, size=32, num_gaussians=4096), pose=Pose(0.0, 0.0))


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(size=8), dict(lr=0.0), dict(lr_colour=float("nan")),
                                 dict(ssim_weight=1.5), dict(novel_weight=-1.0), dict(num_gaussians=-4),
                                 dict(max_scale_growth=0.5), dict(free_regions=("tail",)), dict(free_min_outside=1.5),
                                 dict(free_min_facing=-1.5), dict(tune_steps=-1), dict(tune_lr=0.0),
                                 dict(tune_size=8), dict(tune_novel_weight=-1.0), dict(max_height_change=1.0),
                                 dict(max_height_change=-0.1), dict(max_width_change=1.0),
                                 dict(novel_yaws=(25.0, float("nan"))), dict(child_shrink=1.0), dict(child_shrink=0.0),
                                 dict(jitter_weight=-0.5), dict(jitter_deg=float("inf")), dict(jitter_size=8)])
def test_bad_fit_settings_are_refused(bad):
    with pytest.raises(ValueError):
        FitConfig(**bad)


# -- the input camera ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("yaw", [0.0, 30.0, -30.0, 60.0, -60.0])
def test_estimated_pose_recovers_the_yaw(yaw):
    """Held-out synthetic heads at 512 px, as the issue asks: the yaw within 5 degrees at 0, +-30 and +-60, and
    what a user gets is checked, not which reading won. Measured on these subjects (AMD Zen 4, 1 and 2 threads):
    at most 2.1 degrees; over 14 held-out symmetric heads at pitch 0, at most 4.0 (benchmarks/bench_pose.py)."""
    for index in TEST_SUBJECTS:
        image, mask = synth_view(index, yaw, size=512)
        pose = estimate_pose(image, mask)
        assert float(yaw_error(pose.yaw_deg, yaw)) < 5.0, (index, pose)
        assert abs(pose.pitch_deg) < 10.0, (index, pose)


@pytest.mark.parametrize("yaw", [75.0, -75.0, 90.0, -135.0, 180.0])
def test_estimated_pose_reads_profiles_and_backs(yaw):
    """Where Face Mesh finds no face, or regresses a near-profile (75 degrees) to a less turned face, the pose
    net's reading carries the estimate. The bound (10 degrees) is looser than the 5 near the face: a back of a
    head shows little that fixes its yaw. Measured: at most 4.1 degrees on these subjects."""
    for index in TEST_SUBJECTS:
        image, mask = synth_view(index, yaw, size=256)
        pose = estimate_pose(image, mask)
        assert float(yaw_error(pose.yaw_deg, yaw)) < 10.0, (index, pose)


def test_the_estimate_has_no_knife_edge():
    """A hard switch at a landmark yaw of 40 answered 39.9 for a head turned 60 on one CPU (Face Mesh read 39.9,
    the net 60) and 60 on another (Face Mesh read 40.1). The fused estimate moves smoothly with either reading,
    follows the net when the head is turned, and follows Face Mesh on a near-frontal photo the net misreads."""
    def yaw(lm: float, net: float) -> float:
        return fuse(Pose(lm, 0.0, "landmarks", 0.9), net, 0.0).yaw_deg

    assert abs(yaw(39.9, 60.0) - 60.0) < 0.5 and abs(yaw(40.1, 60.0) - 60.0) < 0.5
    steps = [yaw(lm, 58.0) for lm in torch.linspace(20.0, 60.0, 401).tolist()]
    assert max(abs(a - b) for a, b in itertools.pairwise(steps)) < 0.5  # 0.1 degree steps of the landmarks
    steps = [yaw(30.0, net) for net in torch.linspace(0.0, 60.0, 601).tolist()]
    assert max(abs(a - b) for a, b in itertools.pairwise(steps)) < 0.5
    assert abs(yaw(-0.1, -13.8) - -0.1) < 1.0  # the astronaut: Face Mesh -0.1, the net -13.8
    # A real three-quarter photo the net (procedural heads only) reads as frontal: Face Mesh, which under-reads
    # turns and never over-reads them by that much, counts alone; smoothly so.
    assert yaw(52.7, -3.2) == pytest.approx(52.7) and yaw(-31.8, -5.3) == pytest.approx(-31.8)
    steps = [yaw(lm, 10.0) for lm in torch.linspace(10.0, 60.0, 501).tolist()]
    assert max(abs(a - b) for a, b in itertools.pairwise(steps)) < 0.5
    assert yaw(2.0, 4.0) == pytest.approx(3.0)  # near frontal and agreeing: the mean of the two
    assert yaw(170.0, -170.0) == pytest.approx(-170.0)  # turned: the net, the short way round
    assert fuse(None, 95.0, 3.0).yaw_deg == 95.0


def test_pose_net_is_mirror_symmetric():
    image, mask = synth_view(TEST_SUBJECTS[1], 50.0, pitch=10.0)
    net = bundled_pose_net()
    yaw, pitch = pose_from_net(image, mask, net)
    yaw_m, pitch_m = pose_from_net(image.flip(-1), mask.flip(-1), net)
    assert yaw_m == pytest.approx(-yaw, abs=1e-3) and pitch_m == pytest.approx(pitch, abs=1e-3)


def test_pose_net_files_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_pose_net.py"):
        PoseNet.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        PoseNet.load(bad)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "perchead-model"})
    with pytest.raises(ValueError, match="perchead-model"):
        PoseNet.load(other)
    untagged = tmp_path / "untagged.safetensors"
    save_file({"w": torch.zeros(2)}, str(untagged))
    with pytest.raises(ValueError, match="names no format"):
        PoseNet.load(untagged)
    net = PoseNet(PoseNetConfig(size=32, width=8, hidden=16))
    again = PoseNet.load(net.save(tmp_path / "tiny.safetensors"))
    x = torch.rand(2, 4, 32, 32)
    assert again.config == net.config and torch.equal(again(x), net.eval()(x))



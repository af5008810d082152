"""Map fidelity (issue 16): labels rendered from Gaussians, IoU against a map, controlled edits, the map fit."""

import math

import numpy as np
import pytest
import torch

from perchead.data.format import SEG
from perchead.edit.fidelity import (
    CLASS_GROUPS,
    NUM_CLASSES,
    class_area,
    controlled_edits,
    gaussian_labels,
    map_fidelity,
    render_labels,
)
from perchead.edit.fit import MapFitConfig, colour_target, fit_to_map, scale_K, side_coverage
from perchead.edit.map_eval import edited_columns, side_alpha_ratios
from perchead.edit.segmentation import validate_segmentation
from perchead.geometry import Gaussians
from perchead.geometry.gaussians import rgb_to_sh_dc
from perchead.inference.pose import Pose, camera_K
from perchead.render import rasterize

pytestmark = pytest.mark.usefixtures("deterministic")

S = 48


def plane_scene(n: int = 40, half: float = 0.08, opacity: float = 0.95) -> Gaussians:
    """An n x n grid of small flat Gaussians in the z = 0 plane facing the frontal camera, ``half`` metres
    from the centre to the edges: it fills the middle of the frontal view. Colour: a left/right gradient."""
    t = torch.linspace(-half, half, n)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    means = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(-1, 3)
    spacing = 2 * half / (n - 1)
    log_scales = torch.log(torch.tensor([spacing * 0.6, spacing * 0.6, spacing * 0.05])).expand(len(means), 3)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(means), 4)
    const = torch.ones(len(means))
    rgb = torch.stack([(means[:, 0] / half + 1) / 2, 0.4 * const, 0.3 * const], -1)
    return Gaussians(means, log_scales.clone(), quats.clone(), math.log(opacity / (1 - opacity)) * const,
                     rgb_to_sh_dc(rgb).unsqueeze(-2))


def camera():
    return Pose(0.0, 0.0).viewmat, camera_K(S)


def covered_box(g: Gaussians) -> tuple[int, int, int, int]:
    """Pixel rows/cols where the plane is drawn (alpha > 0.5) from the frontal camera."""
    vm, K = camera()
    _, alpha = render_labels(g, torch.ones(len(g), 1), vm, K, S, backend="cpu")
    ys, xs = torch.nonzero(alpha > 0.5, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def two_class_map(g: Gaussians, inset: int = 0) -> torch.Tensor:
    """Skin on the left half of the drawn plane, hair on the right half, background elsewhere."""
    y0, y1, x0, x1 = covered_box(g)
    seg = torch.zeros(S, S, dtype=torch.long)
    mid = (x0 + x1) // 2
    seg[y0 + inset:y1 - inset, x0 + inset:mid] = SEG["skin"]
    seg[y0 + inset:y1 - inset, mid:x1 - inset] = SEG["hair"]
    return seg


def test_label_render_of_a_tiny_scene_matches_its_class_map():
    g = plane_scene()
    vm, K = camera()
    seg = two_class_map(g)
    labels = gaussian_labels(g, seg, vm, K, backend="cpu")
    assert labels.shape == (len(g), 19) and torch.allclose(labels.sum(-1), torch.ones(len(g)), atol=1e-4)
    rendered, alpha = render_labels(g, labels, vm, K, S, backend="cpu")
    # Every pixel but those on the class boundaries and the outline takes the map's class: measured 0.98-0.99.
    agree = float((rendered == seg).float().mean())
    assert agree > 0.95, agree
    fid = map_fidelity(rendered, alpha, seg)
    assert fid["silhouette_iou"] > 0.9 and fid["iou"]["hair"] > 0.9 and fid["iou"]["skin"] > 0.9, fid
    assert fid["iou"]["ears"] is None  # absent from both
    # the measure can fail: the same labels against the mirrored map
    wrong = map_fidelity(rendered, alpha, seg.flip(-1))
    assert wrong["iou"]["hair"] < 0.2 and wrong["silhouette_iou"] > 0.9, wrong


def test_unseen_gaussians_take_the_class_under_their_centre():
    g = plane_scene(opacity=0.999)
    hidden = plane_scene(n=10, half=0.04)
    hidden = hidden.replace(means=hidden.means + torch.tensor([0.0, 0.0, -0.05]))  # behind the plane: not seen
    both = Gaussians(*(torch.cat([a, b]) for a, b in zip(g.tensors().values(), hidden.tensors().values(),
                                                         strict=True)))
    vm, K = camera()
    seg = two_class_map(g)
    labels = gaussian_labels(both, seg, vm, K, backend="cpu")
    back = labels[len(g):]
    assert torch.all(back.max(-1).values == 1.0)  # one-hot: the pixel under the centre
    right = hidden.means[:, 0] > 0.01
    assert torch.all(back[right].argmax(-1) == SEG["hair"])
    # A map from behind that draws everything it sees as neck: the hidden plane's Gaussians take that class.
    back_vm = Pose(180.0, 0.0).viewmat
    back_map = torch.where(render_labels(both, torch.ones(len(both), 1), back_vm, K, S, backend="cpu")[1] > 0.5,
                           SEG["neck"], SEG["background"])
    labels = gaussian_labels(both, seg, vm, K, backend="cpu", more_views=[(back_map, back_vm, K)])
    assert torch.all(labels[len(g):].argmax(-1) == SEG["neck"])


def test_controlled_edits_keep_class_ids_valid_and_do_what_they_say():
    seg = np.zeros((64, 64), np.uint8)
    seg[16:56, 20:44] = SEG["skin"]
    seg[8:20, 18:46] = SEG["hair"]
    seg[30:36, 16:20] = SEG["l_ear"]
    edits = controlled_edits(seg, grow_px=5, shrink_px=2)
    assert set(edits) == {"hair_grow_5px", "hair_shrink_2px", "hair_removed", "ears_hidden"}
    for name, (m, group) in edits.items():
        validate_segmentation(m)  # integer ids 0..18, same shape
        assert m.shape == seg.shape and m.dtype == np.uint8 and group in CLASS_GROUPS, name
        assert set(np.unique(m)) <= set(np.unique(seg)) | {SEG["hair"], SEG["background"]}, name
    t = {k: torch.from_numpy(v[0].astype(np.int64)) for k, v in edits.items()}
    orig = torch.from_numpy(seg.astype(np.int64))
    assert class_area(t["hair_grow_5px"], "hair") > class_area(orig, "hair")
    assert (t["hair_grow_5px"][orig != SEG["background"]] == orig[orig != SEG["background"]]).all()  # face kept
    assert 0 < class_area(t["hair_shrink_2px"], "hair") < class_area(orig, "hair")
    assert class_area(t["hair_removed"], "hair") == 0
    assert class_area(t["ears_hidden"], "ears") == 0 and class_area(t["ears_hidden"], "hair") > class_area(orig, "hair")


def test_colour_target_keeps_matching_colours_and_paints_the_rest():
    rgb = torch.ones(3, 4, 4) * torch.tensor([0.8, 0.6, 0.5]).view(3, 1, 1)  # skin-coloured everywhere
    alpha = torch.ones(1, 4, 4)
    labels = torch.zeros(19, 4, 4)
    labels[SEG["skin"], :, :2] = 1.0
    labels[SEG["hair"], :, 2:] = 1.0
    rgb[:, :, 2:] = torch.tensor([0.2, 0.1, 0.1]).view(3, 1, 1)  # hair-coloured on the right
    seg = torch.full((4, 4), SEG["skin"])
    seg[:, 3] = SEG["hair"]
    seg[0, 0] = SEG["background"]
    target = colour_target(rgb, alpha, labels, seg, tolerance=0.2)
    assert torch.allclose(target[:, 0, 0], torch.ones(3))  # background: white
    assert torch.allclose(target[:, 1, 1], rgb[:, 1, 1])  # skin painted on skin: the render's own colour
    # column 2 is painted skin over hair-coloured pixels: the skin's mean colour replaces it
    assert torch.allclose(target[:, 1, 2], torch.tensor([0.8, 0.6, 0.5]), atol=1e-5)
    assert torch.allclose(target[:, 1, 3], rgb[:, 1, 3])  # hair painted on hair: kept


def test_a_short_map_fit_follows_a_grown_region():
    """The plane's labels come from the unedited map; the edited map grows the hair 6 px to the right into
    the background. The network-less 'prediction' (the plane) cannot follow (it grows 0 px); the fit must.
    Measured with these settings (80 steps; 1 and 2 threads, AVX-512 and AVX2 kernels): 0.68 of the painted
    growth (65 of 96 px) and silhouette IoU 0.73 -> 0.91. At 40 steps it was 0.51 against a bound of 0.5, one
    pixel from failing; a share of 1 cannot double a bound of 0.5, so the bound is 0.3 (2.3x below what is
    measured, and far above the 0 of a head that does not follow) and the IoU must rise by 0.05 (measured
    0.18, 3.6x)."""
    g = plane_scene(half=0.06)
    vm, K = camera()
    seg = two_class_map(g)
    labels = gaussian_labels(g, seg, vm, K, backend="cpu")
    edited = seg.clone()
    y0, y1, x0, x1 = covered_box(g)
    edited[y0:y1, x1:x1 + 6] = SEG["hair"]
    before = map_fidelity(*render_labels(g, labels, vm, K, S, backend="cpu"), edited)
    cfg = MapFitConfig(steps=80, size=S, num_gaussians=0)
    result = fit_to_map(g, labels, edited, vm, K, cfg, anchors=g.means, s_max=0.03, backend="cpu")
    after = map_fidelity(*render_labels(result.gaussians, result.labels, vm, K, S, backend="cpu"), edited)
    painted = class_area(edited, "hair") - class_area(seg, "hair")
    grown = after["area_rendered"]["hair"] - before["area_rendered"]["hair"]
    assert grown > 0.3 * painted, (grown, painted)
    assert after["silhouette_iou"] > before["silhouette_iou"] + 0.05, (before, after)
    assert result.label_l1[1] < result.label_l1[0]
    assert result.losses[-1] < result.losses[0]
    # positions stay within the anchored bound
    assert float((result.gaussians.means - g.means).abs().max()) <= 0.03 + 1e-6


def test_map_fit_zero_steps_and_depth_lock():
    g = plane_scene(n=12)
    vm, K = camera()
    seg = two_class_map(g)
    labels = gaussian_labels(g, seg, vm, K, backend="cpu")
    same = fit_to_map(g, labels, seg, vm, K, MapFitConfig(steps=0), backend="cpu")
    assert torch.equal(same.gaussians.means, g.means) and same.steps == 0
    moved = fit_to_map(g, labels, seg.roll(3, dims=1), vm, K, MapFitConfig(steps=10, size=S, num_gaussians=0),
                       anchors=g.means, s_max=0.03, backend="cpu")
    d = moved.gaussians.means - g.means
    assert float(d[:, :2].abs().max()) > 1e-4  # it moved across the rays ...
    # ... and not along them (the frontal camera's rays are nearly +-z here). Over all Gaussians the depth
    # moves are 0.038 of the sideways ones (bound 0.1, 2.6x; 1 and 2 threads, AVX-512 and AVX2). The largest
    # single depth move, 0.085 of the largest sideways one, was the old check: 1.2x from its bound.
    assert float(d[:, 2].norm()) < 0.1 * float(d[:, :2].norm())


def test_scale_K_keeps_the_field_of_view():
    K = camera_K(64)
    assert torch.allclose(scale_K(K, 0.5), camera_K(32), atol=1e-4)


def skin_ball(opacity_logit: float, grey: float = 0.5) -> tuple[Gaussians, torch.Tensor, torch.Tensor, int]:
    """3,000 small grey Gaussians filling a ball of radius 8 cm, all labelled skin, and its map from
    :func:`camera`; ``cut``: the row half way down the ball, above which the tests paint the map out."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(3000, 3, generator=gen)
    means = 0.08 * d / d.norm(dim=-1, keepdim=True) * torch.rand(3000, 1, generator=gen) ** (1 / 3)
    n = len(means)
    ball = Gaussians(means, torch.full((n, 3), math.log(0.012)), torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
                     torch.full((n,), opacity_logit), rgb_to_sh_dc(torch.full((n, 3), grey)).unsqueeze(-2))
    labels = torch.zeros(n, NUM_CLASSES)
    labels[:, SEG["skin"]] = 1
    vm, K = camera()
    seg = torch.where(render_labels(ball, labels, vm, K, S, backend="cpu")[1] > 0.5, SEG["skin"], 0)
    y0, y1, _, _ = covered_box(ball)
    return ball, labels, seg, (y0 + y1) // 2


def test_side_holes_leave_out_the_prism_of_a_repainted_region():
    """A ball of Gaussians whose top half, seen from the front, is painted out: the Gaussians in that prism
    go, which is what the edit asks for. Seen from the sides that is a large loss of alpha if only the edited
    group's label marks the edited region (all the ball is skin here), and none once the prism is left out."""
    ball, labels, seg, cut = skin_ball(opacity_logit=2.0)
    vm, K = camera()
    means = ball.means
    edited_map = seg.clone()
    edited_map[:cut] = SEG["background"]
    changed = edited_columns(seg, edited_map, 1)
    assert changed[:cut].any() and not changed[cut + 2:].any()
    pix = (means @ vm[:3, :3].T + vm[:3, 3])
    rows = pix[:, 1] / pix[:, 2] * K[1, 1] + K[1, 2]
    edited = Gaussians(means, ball.log_scales, ball.quats, torch.where(rows < cut, -20.0, 2.0), ball.sh)
    r = side_alpha_ratios(edited, ball, labels, "hair", changed, vm, K, S, "cpu")
    assert r["by_label"] < 0.85  # the prism's loss counted as a hole
    assert r["by_region"] > 0.95  # and left out
    # A view counts only where enough of it lies outside the edited region: asking for all of it leaves out
    # every view of the region measure (the prism is in each), not the label measure (nothing is hair).
    r = side_alpha_ratios(edited, ball, labels, "hair", changed, vm, K, S, "cpu", min_fraction=1.0)
    assert r["by_region"] == 1.0 and r["by_label"] < 0.85


def test_side_coverage_keeps_the_sides_of_a_head_solid_outside_the_painted_out_prism():
    """A see-through ball (opacity 0.5 each) whose top half the map paints out. The side views' coverage
    region leaves out what lies in that prism; inside the region, the term pulls the sides' alpha up to solid.
    Measured with these settings (60 steps): 0.964 -> 0.993 with the term, 0.970 without: the uncovered share
    0.0070 against 0.0305, so the bounds below hold by 2.1x (0.985: a share of 0.015) and 2.2x (half the share
    left without the term). At 30 steps the gain over no term held by only 1.5x."""
    ball, labels, seg, cut = skin_ball(opacity_logit=0.0)
    vm, K = camera()
    n = len(ball)
    seg[:cut] = SEG["background"]
    yaws = (90.0, -90.0, 180.0)
    vms, Ks, alpha0, keep, weight = side_coverage(ball, seg, vm, K, yaws, 32, "cpu")
    assert vms.shape == (3, 4, 4) and alpha0.shape == keep.shape == (3, 32, 32) and weight.shape == (n,)
    drawn = alpha0 > 0.5
    rows = drawn.any(-1)
    # seen from the side, the upper half of the ball lies in the painted-out prism, the lower half does not
    top = [int(torch.nonzero(r)[0]) for r in rows]
    bottom = [int(torch.nonzero(r)[-1]) for r in rows]
    for c in range(3):
        assert not keep[c, top[c]].any() and keep[c, bottom[c] - 1].any() and not keep[c][~(alpha0[c] > 0.01)].any()
    assert bool((weight >= 0).all()) and float(weight.max()) > 0
    region = keep & drawn
    side = {}
    for w in (0.0, 4.0):
        cfg = MapFitConfig(steps=60, size=S, num_gaussians=0, side_weight=w, side_size=32)
        fitted = fit_to_map(ball, labels, seg, vm, K, cfg, anchors=ball.means, s_max=0.02, backend="cpu").gaussians
        side[w] = float(rasterize(fitted, vms, Ks, 32, 32, backend="cpu").alpha[..., 0][region].mean())
    assert side[4.0] > 0.985 and 1.0 - side[4.0] < 0.5 * (1.0 - side[0.0]), (float(alpha0[region].mean()), side)


def test_the_map_fit_fades_what_the_map_paints_out_instead_of_whitening_it():
    """Outside the map's head only the alpha term acts: on a white background, turning a Gaussian white would
    satisfy a colour loss as well as fading it, and the side coverage keeps such Gaussians opaque (white
    speckles from the side). Gaussians well inside the painted-out top half keep their colour."""
    ball, labels, seg, cut = skin_ball(opacity_logit=2.0, grey=0.3)
    vm, K = camera()
    means = ball.means
    seg[:cut] = SEG["background"]
    cfg = MapFitConfig(steps=30, size=S, num_gaussians=0, side_size=32)
    fitted = fit_to_map(ball, labels, seg, vm, K, cfg, anchors=ball.means, s_max=0.02, backend="cpu").gaussians
    pix = means @ vm[:3, :3].T + vm[:3, 3]
    rows = pix[:, 1] / pix[:, 2] * K[1, 1] + K[1, 2]
    out = rows < cut - 3  # well inside the painted-out rows
    assert int(out.sum()) > 100
    assert float((fitted.rgb[out] - 0.3).abs().max()) < 0.02

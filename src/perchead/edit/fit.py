"""Test-time fitting of an edited head to its painted map: the map becomes a control the head follows.

The editing network reads the map, but a small checkpoint moves its template-anchored Gaussians only a little
when the map changes (docs/editing.md). As :mod:`perchead.inference.fit` fits a reconstruction to its photo,
:func:`fit_to_map` fits the edited head to the map *from the map's camera*:

* **targets**: the map's foreground as alpha; its classes as the rendered labels of the Gaussians (labels
  fixed, from :func:`perchead.edit.fidelity.gaussian_labels`, so only geometry, opacity and colour can make the
  label render match: hair-labelled Gaussians must spread into hair grown into the background, and fade where
  hair was painted out); and a colour image: the network's own render wherever its colour is within
  ``colour_tolerance`` of the painted class's mean colour, that class's mean colour where it is not or where
  nothing was drawn (a grown region, ears painted over with hair), compared inside the map's head only;
* **the rest of the head stays the network's**: every Gaussian's step is scaled by how well the map's camera
  sees it and barely seen ones are pulled back to the prediction (the back, the far side), positions stay in
  the anchored range, exactly as in the photo fit (:func:`perchead.inference.fit.optimise`);
* **and stays a solid head from the side** (:func:`side_coverage`): seen from the profiles and the back, where
  the network draws the head and the map does not paint it out, the fitted alpha is pulled up to 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from perchead.data.format import SEG
from perchead.geometry import HEAD_CAMERA_RADIUS, Gaussians, orbit_viewmats, project_points, unproject_depth
from perchead.inference.fit import (
    FitConfig,
    FitParams,
    FitProgress,
    Prior,
    densify,
    optimise,
    paint,
    photo_colours,
    view_loss,
)
from perchead.render import rasterize, render_features

from .fidelity import NUM_CLASSES, one_hot, resize_map
from .segmentation import PALETTE

SIDE_YAWS = (90.0, -90.0, 180.0)
"""yaws (degrees, the head's frame) of the side views: the profiles and the back"""


@dataclass
class MapFitConfig(FitConfig):
    """The photo fit's settings with the map fit's defaults, plus its own terms; ``steps=0``: the network's
    Gaussians as they are (``perchead edit --fit-steps 0``)."""

    steps: int = 60
    size: int = 128
    """side of the renders compared with the map (the demo's maps are 128 px)"""
    num_gaussians: int = 16384
    """Gaussians after densifying (a square multiple of the prediction's; at most the prediction's: none).
    Four times the demo's 4,096: a 128 px map needs no more, and the fit's time grows with the count"""
    alpha_weight: float = 2.0
    """the silhouette is the map's strongest statement (the photo fit's 0.5 left painted-out hair whitish)"""
    label_weight: float = 1.0
    """weight of sum_c |rendered label c - map one-hot c| per pixel"""
    colour_tolerance: float = 0.2
    """mean |RGB| distance from the painted class's mean colour within which the network's colour is kept"""
    lock_depth: bool = True
    """move Gaussians only across the map camera's rays, never along them: one view says nothing about depth,
    and depth moves show as streaks from the side"""
    scale_prior_weight: float = 1.0
    """pull of every Gaussian's log-scales back to the prediction's"""
    side_weight: float = 4.0
    """weight of the side views' coverage: seen from :attr:`side_yaws`, the fitted head is solid (alpha 1)
    where the network's head is drawn (alpha > 0.5) and never below the network's elsewhere, except where the
    map says the head must go (the surface seen from the side lies on a ray through the map's background).
    One view fits the front only; without this, painting hair out left see-through necks from the side
    (docs/editing.md). Costs a render of the side views per step (about doubles the fit's time)"""
    side_yaws: tuple[float, ...] = SIDE_YAWS
    """yaws of the side views (the hole check of ``perchead eval-edit`` uses :data:`SIDE_YAWS` too)"""
    side_size: int = 64
    """side of the side views' renders (coverage needs no detail, and each costs a render per step)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.label_weight) and self.label_weight >= 0):
            raise ValueError(f"label_weight must be >= 0, got {self.label_weight}")
        if not self.colour_tolerance >= 0:
            raise ValueError(f"colour_tolerance must be >= 0, got {self.colour_tolerance}")
        if not (math.isfinite(self.side_weight) and self.side_weight >= 0):
            raise ValueError(f"side_weight must be >= 0, got {self.side_weight}")
        if self.side_size <= 0:
            raise ValueError(f"side_size must be positive, got {self.side_size}")


@dataclass
class MapFitResult:
    gaussians: Gaussians
    labels: Tensor
    """[N, C] the fitted Gaussians' class probabilities (each child keeps its parent's)"""
    steps: int
    losses: list[float] = field(default_factory=list)
    label_l1: tuple[float, float] = (math.nan, math.nan)
    """mean per-pixel sum_c |label render - map| before the first step and after the last"""
    seconds: float = 0.0

    def metadata(self, config: MapFitConfig) -> dict:
        return {"ran": self.steps > 0, "steps": self.steps, "num_gaussians": len(self.gaussians),
                "seconds": round(self.seconds, 3),
                "loss_first": round(self.losses[0], 6) if self.losses else None,
                "loss_last": round(self.losses[-1], 6) if self.losses else None,
                "label_l1_before": round(self.label_l1[0], 6), "label_l1_after": round(self.label_l1[1], 6),
                "config": asdict(config)}


def scale_K(K: Tensor, factor: float) -> Tensor:
    """Intrinsics of the same camera at ``factor`` times the pixel size (pixel centres at +0.5)."""
    out = K.clone()
    out[:2] *= factor
    return out


def _render(g: Gaussians, labels: Tensor, viewmat: Tensor, K: Tensor, size: int,
            backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """One compositing pass of colours and labels: RGB on white [3, S, S], alpha [1, S, S], labels [C, S, S]."""
    feats, alpha = render_features(g, torch.cat([g.rgb, labels], -1), viewmat[None], K[None], size, size,
                                   backend=backend)
    f, a = feats[0].permute(2, 0, 1), alpha[0].permute(2, 0, 1)
    return f[:3] + (1.0 - a), a, f[3:]


def colour_target(rgb: Tensor, alpha: Tensor, label_render: Tensor, seg: Tensor, tolerance: float) -> Tensor:
    """The map fit's colour image [3, S, S] (see the module docstring): class mean colours measured on the
    head's own render (unpremultiplied colour weighted by each class's rendered label weight); a class the head
    has no Gaussians of takes its palette colour."""
    colour = (rgb - (1.0 - alpha)) / alpha.clamp_min(1e-3)  # unpremultiplied
    weight = label_render.clamp_min(0)  # [C, S, S]
    total = weight.sum((1, 2))
    means = torch.einsum("chw,khw->ck", weight, colour) / total.clamp_min(1e-6)[:, None]
    palette = torch.from_numpy(PALETTE[:NUM_CLASSES]).to(means) / 255.0
    means = torch.where((total > 1.0)[:, None], means, palette).clamp(0, 1)
    painted = means[seg].permute(2, 0, 1)  # [3, S, S]
    keep = (alpha > 0.5) & ((colour - painted).abs().mean(0, keepdim=True) < tolerance)
    fg = (seg != SEG["background"])[None]
    return torch.where(fg, torch.where(keep, rgb, painted), torch.ones_like(rgb))


def side_coverage(g: Gaussians, seg: Tensor, vm: Tensor, K: Tensor, yaws: tuple[float, ...], size: int,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The side views of the coverage term: their cameras (viewmats [V, 4, 4], Ks [V, 3, 3] at ``size`` px,
    the map camera's field of view), ``g``'s alpha there [V, size, size], the pixels [V, size, size] whose
    surface point (``g``'s expected depth) projects, through the map's camera ``(vm, K)``, onto the map's
    foreground (drawn pixels the map does not ask the head to leave), and each Gaussian's compositing weight
    [N] summed over those pixels (read off a feature gradient, as :func:`perchead.inference.fit.photo_colours`
    does)."""
    vms = orbit_viewmats(list(yaws), [0.0] * len(yaws), HEAD_CAMERA_RADIUS).to(g.means)
    Ks = scale_K(K.to(g.means), size / seg.shape[-1]).expand(len(vms), 3, 3)
    g = g.detach()
    with torch.no_grad():
        out = rasterize(g, vms, Ks, size, size, backend=backend)
    fg = seg != SEG["background"]
    keep = []
    for c in range(len(vms)):
        pts = unproject_depth(out.depth[c, ..., 0], vms[c], Ks[c]).reshape(-1, 3)
        pix, _ = project_points(pts, vm.to(pts)[None], K.to(pts)[None])
        u, v = pix[0, :, 0].floor().long(), pix[0, :, 1].floor().long()
        inside = (u >= 0) & (u < fg.shape[1]) & (v >= 0) & (v < fg.shape[0])
        on_fg = torch.zeros_like(inside)
        on_fg[inside] = fg[v[inside], u[inside]]
        keep.append(on_fg.reshape(size, size))
    keep_t = torch.stack(keep) & (out.alpha[..., 0] > 0.01)  # an empty pixel has no surface point
    with torch.enable_grad():
        ones = torch.ones(len(g), 1, device=g.means.device, requires_grad=True)
        feats, _ = render_features(g, ones, vms, Ks, size, size, backend=backend)
        (feats[..., 0] * keep_t).sum().backward()
    return vms, Ks, out.alpha[..., 0], keep_t, ones.grad[:, 0]


def fit_to_map(gaussians: Gaussians, labels: Tensor, segmentation: Tensor, viewmat: Tensor, K: Tensor,
               config: MapFitConfig | None = None, anchors: Tensor | None = None, s_max: float | None = None,
               backend: str = "auto", progress: FitProgress | None = None) -> MapFitResult:
    """Fit ``gaussians`` (unbatched, with class probabilities ``labels`` [N, C]) to ``segmentation`` [S, S]
    seen by ``viewmat`` with intrinsics ``K`` at S pixels. ``anchors`` / ``s_max``: the position bound, as in
    :func:`perchead.inference.fit.fit_to_photo`.

    Raises:
        FitDivergedError: a loss or parameter became NaN/infinite.
    """
    cfg = config or MapFitConfig()
    with torch.inference_mode(False), torch.enable_grad():
        gaussians = Gaussians(*(t.clone() for t in gaussians.tensors().values()))
        return _fit(gaussians, labels.clone(), segmentation.clone(), viewmat.clone(), K.clone(), cfg, anchors,
                    s_max, backend, progress)


def _fit(gaussians: Gaussians, labels: Tensor, segmentation: Tensor, viewmat: Tensor, K: Tensor,
         cfg: MapFitConfig, anchors: Tensor | None, s_max: float | None, backend: str,
         progress: FitProgress | None) -> MapFitResult:
    start = time.perf_counter()
    if cfg.steps == 0:
        return MapFitResult(gaussians, labels, 0, seconds=time.perf_counter() - start)
    device = gaussians.means.device
    size = cfg.size
    seg = resize_map(segmentation.to(device), size)
    vm = viewmat.to(device)
    Ks = scale_K(K.to(device), size / segmentation.shape[-1])
    fg = (seg != SEG["background"]).float()[None]
    label_target = one_hot(seg).permute(2, 0, 1).to(device) * fg  # the background class is never drawn

    # a checkpoint that already predicts as many Gaussians as asked for is fitted as it is
    num = cfg.num_gaussians if cfg.num_gaussians > len(gaussians) else len(gaussians)
    dense, parents = densify(gaussians.detach(), num)
    lab = labels.to(device)[parents]
    with torch.no_grad():
        rgb0, alpha0, label0 = _render(dense, lab, vm, Ks, size, backend)
        target = colour_target(rgb0, alpha0, label0, seg, cfg.colour_tolerance)
    colour, weight = photo_colours(dense, vm, target, fg, backend)
    dense = paint(dense, colour, weight, cfg.prior_visibility)
    trust = (weight / (weight + cfg.prior_visibility)).sqrt()
    step_trust = trust
    if cfg.side_weight > 0 and cfg.side_yaws:
        side_vms, side_Ks, side_alpha0, side_keep, side_w = side_coverage(dense, seg, vm, Ks, cfg.side_yaws,
                                                                          cfg.side_size, backend)
        side_keep = side_keep.float()
        # A head is solid: where the network draws it, the side views' alpha is pulled up to 1, never down
        # (its neck is a sparse grid of Gaussians that the hair behind it hides, until the hair is painted out).
        side_alpha0 = torch.where(side_alpha0 > 0.5, torch.ones_like(side_alpha0), side_alpha0)
        # A Gaussian the side views see well may grow, turn and gain opacity for them (``side_w`` in pixels of
        # the fitted size, as ``weight``), and the prior's pull weakens as for a Gaussian the map's camera sees;
        # but it moves only as the map's camera sees it: one view says nothing about where the far side lies
        # (with positions free too, a style swap moved the fitted Gaussians 30% more).
        side_w = side_w * (size / cfg.side_size) ** 2
        step_trust = torch.maximum(trust, (side_w / (side_w + cfg.prior_visibility)).sqrt())

    params = FitParams(dense, None if anchors is None else anchors.to(device)[parents], s_max)
    prior = Prior.of(params, dense, s_max)
    unseen = 1.0 - step_trust
    prior_scales = dense.log_scales.detach()

    def total_loss() -> tuple[Tensor, Tensor]:
        g = params.gaussians()
        rgb, alpha, label = _render(g, lab, vm, Ks, size, backend)
        # Colours are fitted inside the map's head only; outside it the alpha term alone makes Gaussians go.
        # On white, turning a Gaussian white satisfies the colour loss as well as fading it, and where the side
        # coverage keeps it opaque, it showed as white speckles from the side (a white cap after hair removal).
        rgb = torch.where(fg > 0, rgb, target)
        label_l1 = (label - label_target).abs().sum(0).mean()
        loss = view_loss(rgb[None], alpha[None], target[None], fg[None], cfg) + cfg.label_weight * label_l1
        if cfg.scale_prior_weight > 0:
            loss = loss + cfg.scale_prior_weight * (g.log_scales - prior_scales).square().sum(-1).mean()
        if cfg.side_weight > 0 and cfg.side_yaws:
            side_alpha = rasterize(g, side_vms, side_Ks, cfg.side_size, cfg.side_size, backend=backend).alpha[..., 0]
            lost = (side_alpha0 - side_alpha).clamp_min(0) * side_keep
            loss = loss + cfg.side_weight * lost.mean()
        return loss + cfg.prior_weight * prior.loss(g, unseen), label_l1

    after_step = None
    if cfg.lock_depth:
        start_means = params.means().detach().clone()
        centre = torch.linalg.inv(vm)[:3, 3]
        ray = torch.nn.functional.normalize(start_means - centre, dim=-1)

        def after_step() -> None:
            d = params.means() - start_means
            params.set_means(start_means + d - (d * ray).sum(-1, keepdim=True) * ray)

    fitted, losses, l1s = optimise(params, step_trust, total_loss, cfg, anchors is not None, progress, after_step,
                                   position_trust=trust)
    return MapFitResult(fitted, lab, cfg.steps, losses, l1s, time.perf_counter() - start)


__all__ = ["SIDE_YAWS", "MapFitConfig", "MapFitResult", "colour_target", "fit_to_map", "scale_K", "side_coverage"]

"""Test-time fitting: the network's head, refined against the photo it came from.

The feed-forward prediction is a complete head (back and top included) in the canonical frame, but a small
checkpoint cannot carry a real person's likeness by itself. As PanoHead/SphereHead users invert and splat
pipelines refine, :func:`fit_to_photo` optimises the Gaussians against the matted input seen from the input
camera, in four steps:

1. :func:`perchead.inference.pose.estimate_pose` -- the input camera's yaw and pitch relative to the
   predicted head (a photo is not always frontal; the network's head is canonical).
2. :func:`densify` -- every predicted Gaussian becomes a grid of ``k`` children inside its own covariance (the
   mixture keeps the parent's mean and covariance), so that the fitted head has the paper's 65,536 Gaussians.
3. :func:`photo_colours` -- Gaussians that the input camera sees take the colour of the photo pixels they
   contribute to (their exact compositing weights, from one backward pass), before any step.
4. Adam on every parameter: L1 + SSIM and an alpha loss on the input view; a weaker loss on the mirrored
   photo seen from the mirrored camera (faces are nearly symmetric, so the far cheek is not left generic);
   Gaussians that the input camera barely sees are pulled toward the prediction and take steps in proportion
   to how well they are seen; positions stay within the model's anchored range (``anchor + tanh(.) * s_max``,
   the position head's own bound).

Everything here is plain PyTorch on :func:`perchead.render.rasterize`, so it runs on any backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..geometry import Gaussians
from ..geometry.gaussians import rgb_to_sh_dc
from ..losses.pixel import ssim
from ..render import rasterize, render_features
from ..render.project import quat_to_rotmat
from .pose import Pose, camera_K, estimate_pose, resize_to

FitProgress = Callable[[int, int, float], None]
"""progress(step, steps, loss): called after every fitting step."""


class FitDivergedError(RuntimeError):
    """The fit produced a NaN or infinite loss or parameter; nothing is written."""


@dataclass
class FitConfig:
    """How the network's head is fitted to the photo. Every field is a ``perchead reconstruct --fit-*`` option;
    ``steps=0`` gives the paper's pure feed-forward result."""

    steps: int = 60
    """optimisation steps (0: no fitting, the network's Gaussians as they are)"""
    size: int = 224
    """side of the renders the fit compares with the photo, pixels (224: the package-shipped portraits reach
    22 dB masked PSNR from the input camera, 192 falls short on one of them; benchmarks/bench_likeness.py)"""
    num_gaussians: int = 65536
    """Gaussians after densification (a multiple of the prediction's count; 0 or the prediction's: none)"""
    lr: float = 1.0
    """multiplies every learning rate below"""
    lr_position: float = 0.04
    """Adam step of the bounded position parameter (tanh space; 1 = the whole anchored range)"""
    lr_scale: float = 0.04
    """Adam step of the log-scales"""
    lr_opacity: float = 0.1
    """Adam step of the opacity logits"""
    lr_colour: float = 0.1
    """Adam step of the colour logits"""
    lr_rotation: float = 0.02
    """Adam step of the quaternions"""
    ssim_weight: float = 0.2
    """input-view loss = (1 - w) L1 + w (1 - SSIM)"""
    alpha_weight: float = 0.5
    """weight of |rendered alpha - photo mask| on the input view"""
    mirror_weight: float = 0.3
    """weight of the same losses on the mirrored photo from the mirrored camera, reached at ``mirror_yaw_deg``
    of input yaw (a frontal photo sees both cheeks, so the mirror then adds only a symmetry bias)"""
    mirror_yaw_deg: float = 20.0
    prior_weight: float = 1.0
    """pull of barely seen Gaussians back to the prediction (position in units of s_max, colour, opacity)"""
    prior_visibility: float = 0.5
    """compositing weight (pixels at ``size``) at which a Gaussian counts as half seen"""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"--fit-steps must be >= 0, got {self.steps}")
        if self.size < 32:
            raise ValueError(f"--fit-size must be at least 32 pixels, got {self.size}")
        if self.num_gaussians < 0:
            raise ValueError(f"--fit-gaussians must be >= 0, got {self.num_gaussians}")
        rates = {k: v for k, v in asdict(self).items() if k.startswith("lr")}
        bad = {k: v for k, v in rates.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"fitting learning rates must be positive and finite, got {bad}")
        weights = {k: getattr(self, k) for k in ("ssim_weight", "alpha_weight", "mirror_weight", "prior_weight")}
        if any(not (math.isfinite(v) and v >= 0) for v in weights.values()) or self.ssim_weight > 1:
            raise ValueError(f"fitting weights must be >= 0 (ssim_weight <= 1), got {weights}")


@dataclass
class FitResult:
    gaussians: Gaussians
    pose: Pose
    steps: int
    losses: list[float] = field(default_factory=list)
    """total loss before the first step, then after every step"""
    input_l1: tuple[float, float] = (math.nan, math.nan)
    """input-view L1 (on white) before the first step and after the last"""
    seconds: float = 0.0
    seen_fraction: float = 0.0
    """share of the Gaussians that the input camera sees (more than half of ``prior_visibility``)"""

    def metadata(self, config: FitConfig) -> dict:
        hist = self.losses
        keep = sorted({0, len(hist) - 1, *range(0, len(hist), max(1, len(hist) // 10))}) if hist else []
        return {"ran": self.steps > 0, "steps": self.steps, "size": config.size,
                "num_gaussians": len(self.gaussians), "seconds": round(self.seconds, 3),
                "loss_first": round(hist[0], 6) if hist else None, "loss_last": round(hist[-1], 6) if hist else None,
                "loss_curve": [[i, round(hist[i], 6)] for i in keep],
                "input_l1_before": round(self.input_l1[0], 6), "input_l1_after": round(self.input_l1[1], 6),
                "seen_fraction": round(self.seen_fraction, 4),
                "config": {k: v for k, v in asdict(config).items()}}


# -- cameras -------------------------------------------------------------------------------------------------
_FLIP_X = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def mirror_viewmat(viewmat: Tensor) -> Tensor:
    """The camera that sees the head mirrored in its x = 0 plane (left <-> right) as the horizontally
    flipped image of ``viewmat``: a symmetric head renders from it as the flipped photo."""
    flip = _FLIP_X.to(viewmat)
    return flip @ viewmat @ flip


def mirror_ramp(yaw_deg: float, full_deg: float) -> float:
    """0 up to 5 degrees of yaw (a frontal photo: the mirror would only blur its asymmetries, and costs a
    render per step), rising linearly to 1 at ``full_deg``."""
    return min(1.0, max(0.0, (abs(yaw_deg) - 5.0) / max(full_deg - 5.0, 1e-6)))


# -- 2. densify ----------------------------------------------------------------------------------------------
CHILD_SHRINK = 0.5
"""child standard deviation / parent's along the parent's two largest axes (the children tile that plane; the
third, thinnest axis is kept): 16 children then draw 16 x 0.25 = 4 times the parent's footprint, not 16."""
CHILD_OPTICAL_DEPTH = 0.5
"""share of the parent's optical depth that the children's opacities add up to through its centre: less than
1 because neighbouring parents' children overlap along a ray as well. Chosen by rendering the demo's
prediction of the example photo from the front, a profile and the back before and after splitting 4,096 into
65,536 (shrink 0.4-0.6 x share 0.4-1.0): 0.5 / 0.5 gave 27.8-28.8 dB PSNR at a third less render time than
0.6 / 0.6 (29 dB); see tests/test_fit.py for the tolerance."""


def child_grid(m: int) -> Tensor:
    """[m*m, 2] offsets of an m x m grid with mean 0 and per-axis variance 1 - CHILD_SHRINK^2: with children
    of standard deviation CHILD_SHRINK, the mixture keeps the parent's mean and covariance in that plane."""
    if m == 1:
        return torch.zeros(1, 2)
    t = torch.arange(m, dtype=torch.float32) - (m - 1) / 2
    t = t * math.sqrt((1 - CHILD_SHRINK**2) / float((t**2).mean()))
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(m * m, 2)


def densify(gaussians: Gaussians, num: int) -> tuple[Gaussians, Tensor]:
    """Split every Gaussian into ``k = num / len(gaussians)`` children (k a square: 4, 9, 16, ...) inside its
    own covariance.

    The children form a sqrt(k) x sqrt(k) grid in the plane of the parent's two largest axes
    (:func:`child_grid`), each :data:`CHILD_SHRINK` times the parent's size along them, so the mixture has the
    parent's mean and covariance; each child's opacity makes the children's summed optical depth through the
    parent's centre :data:`CHILD_OPTICAL_DEPTH` of the parent's (``1 - (1 - o)^(0.5 / (k 0.5^2))``).
    Returns the children and each child's parent index.
    """
    n = len(gaussians)
    device = gaussians.means.device
    if num in (0, n):
        return gaussians, torch.arange(n, device=device)
    m = int(round(math.sqrt(num / n)))
    if num % n or m * m * n != num:
        raise ValueError(f"--fit-gaussians {num} is not a square multiple (4, 9, 16, ... times) of the "
                         f"prediction's {n} Gaussians")
    k = m * m
    parents = torch.arange(n, device=device).repeat_interleave(k)
    g = gaussians.select(parents)
    scales = g.scales
    largest = torch.argsort(scales, dim=-1, descending=True)[:, :2]
    u = torch.zeros_like(g.means).scatter_(1, largest, child_grid(m).to(g.means).repeat(n, 1))
    shrink = torch.ones_like(g.means).scatter_(1, largest, CHILD_SHRINK)
    offsets = (quat_to_rotmat(g.quats) @ (scales * u).unsqueeze(-1)).squeeze(-1)
    o = g.opacities.clamp(1e-6, 1 - 1e-6)
    child_o = 1.0 - (1.0 - o) ** (CHILD_OPTICAL_DEPTH / (k * CHILD_SHRINK**2))
    return g.replace(means=g.means + offsets, log_scales=g.log_scales + torch.log(shrink),
                     opacity_logits=torch.logit(child_o.clamp(1e-6, 1 - 1e-6))), parents


# -- 3. colours from the photo -------------------------------------------------------------------------------
def photo_colours(gaussians: Gaussians, viewmat: Tensor, image: Tensor, mask: Tensor,
                  backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Each Gaussian's compositing-weighted mean photo colour and its total weight (pixels) from ``viewmat``.

    ``image`` [3, S, S] is the unmatted (or matted) photo and ``mask`` [1, S, S] its alpha: only foreground
    pixels count, so silhouette Gaussians do not take the background colour. The weights w_i(p) = alpha_i T_i
    are read off the gradient of one feature render (d sum_p f(p) target(p) / d f_i = sum_p w_i(p) target(p)).
    """
    size = image.shape[-1]
    g = gaussians.detach()
    feats = torch.zeros(len(g), 4, device=g.means.device, requires_grad=True)
    K = camera_K(size).to(g.means)
    out, _ = render_features(g, feats, viewmat.to(g.means)[None], K[None], size, size, backend=backend)
    m = mask.to(g.means).permute(1, 2, 0)
    target = torch.cat([image.to(g.means).permute(1, 2, 0) * m, m], dim=-1)
    (out[0] * target).sum().backward()
    grad = feats.grad
    weight = grad[:, 3]
    colour = grad[:, :3] / weight.clamp_min(1e-8)[:, None]
    return colour.clamp(0, 1), weight


def paint(gaussians: Gaussians, colour: Tensor, weight: Tensor, prior_visibility: float) -> Gaussians:
    """Blend each Gaussian's colour toward ``colour`` by how well it is seen (``weight`` pixels of compositing
    weight, half way at ``prior_visibility``): unseen ones keep the prediction's."""
    blend = (weight / (weight + prior_visibility))[:, None]
    return gaussians.replace(sh=rgb_to_sh_dc(blend * colour + (1 - blend) * gaussians.rgb).unsqueeze(-2))


# -- 4. the fit ----------------------------------------------------------------------------------------------
class FitParams(torch.nn.Module):
    """The optimised parameters, with the position bound built in."""

    def __init__(self, g: Gaussians, anchors: Tensor | None, s_max: float | None) -> None:
        super().__init__()
        self.anchors, self.s_max = anchors, s_max
        if anchors is None:
            self.pos = torch.nn.Parameter(g.means.clone())
        else:
            self.pos = torch.nn.Parameter(torch.empty_like(g.means))
            self.set_means(g.means)
        self.log_scales = torch.nn.Parameter(g.log_scales.clone())
        self.quats = torch.nn.Parameter(g.quats.clone())
        self.opacity_logits = torch.nn.Parameter(g.opacity_logits.clone())
        self.colour_logits = torch.nn.Parameter(torch.logit(g.rgb.clamp(1e-3, 1 - 1e-3)))

    def means(self) -> Tensor:
        return self.pos if self.anchors is None else self.anchors + torch.tanh(self.pos) * self.s_max

    @torch.no_grad()
    def set_means(self, means: Tensor) -> None:
        """Move the Gaussians to ``means`` (clamped into the anchored range)."""
        if self.anchors is None:
            self.pos.copy_(means)
        else:
            self.pos.copy_(torch.atanh(((means - self.anchors) / self.s_max).clamp(-0.995, 0.995)))

    def gaussians(self) -> Gaussians:
        rgb = torch.sigmoid(self.colour_logits)
        return Gaussians(self.means(), self.log_scales, self.quats, self.opacity_logits,
                         rgb_to_sh_dc(rgb).unsqueeze(-2))


def view_loss(out_rgb: Tensor, out_alpha: Tensor, image: Tensor, mask: Tensor, cfg: FitConfig) -> Tensor:
    """(1 - w) L1 + w (1 - SSIM) on the colours plus ``alpha_weight`` |alpha - mask|; images [1, 3, S, S]."""
    l1 = (out_rgb - image).abs().mean()
    loss = (1 - cfg.ssim_weight) * l1
    if cfg.ssim_weight > 0:
        loss = loss + cfg.ssim_weight * (1 - ssim(out_rgb, image).mean())
    return loss + cfg.alpha_weight * (out_alpha - mask).abs().mean()


def fit_to_photo(gaussians: Gaussians, image: Tensor, mask: Tensor, config: FitConfig | None = None,
                 anchors: Tensor | None = None, s_max: float | None = None, pose: Pose | None = None,
                 backend: str = "auto", progress: FitProgress | None = None) -> FitResult:
    """Fit the predicted head ``gaussians`` (unbatched) to the photo.

    Args:
        image: [3, H, W] the photo matted on white, in [0, 1].
        mask: [1, H, W] its foreground alpha.
        anchors: [N_pred, 3] template points the prediction is anchored on, with ``s_max`` the position
            head's per-axis bound in metres: fitted positions stay within it. None: positions are free.
        pose: the input camera; None: :func:`perchead.inference.pose.estimate_pose`.
    Raises:
        FitDivergedError: a loss or parameter became NaN/infinite.
    """
    # Callers often run the network under inference_mode (the app, Reconstructor.predict): the fit needs
    # autograd, and ordinary copies of the prediction.
    with torch.inference_mode(False), torch.enable_grad():
        gaussians = Gaussians(*(t.clone() for t in gaussians.tensors().values()))
        return _fit(gaussians, image.clone(), mask.clone(), config or FitConfig(), anchors, s_max, pose,
                    backend, progress)


def _fit(gaussians: Gaussians, image: Tensor, mask: Tensor, cfg: FitConfig, anchors: Tensor | None,
         s_max: float | None, pose: Pose | None, backend: str, progress: FitProgress | None) -> FitResult:
    start = time.perf_counter()
    device = gaussians.means.device
    if pose is None:
        with torch.no_grad():
            pose = estimate_pose(image, mask)
    if cfg.steps == 0:
        return FitResult(gaussians, pose, 0, seconds=time.perf_counter() - start)

    size = cfg.size
    img = resize_to(image, size).to(device)[None]
    msk = resize_to(mask, size).to(device)[None]
    vm = pose.viewmat.to(device)
    vm_m = mirror_viewmat(vm)
    K = camera_K(size).to(device)[None]
    # The mirror only helps where the photo misses a side of the face: ramped in with the yaw.
    mirror_w = cfg.mirror_weight * mirror_ramp(pose.yaw_deg, cfg.mirror_yaw_deg)

    dense, parents = densify(gaussians.detach(), cfg.num_gaussians or len(gaussians))
    colour, weight = photo_colours(dense, vm, img[0], msk[0], backend)
    seen = weight / (weight + cfg.prior_visibility)  # 0: never seen, -> 1: well seen
    if mirror_w > 0:
        colour_m, weight_m = photo_colours(dense, vm_m, img[0].flip(-1), msk[0].flip(-1), backend)
        # Seen only in the mirror: take the mirrored photo's colour (the photo's colour stays where both see it)
        only_m = weight_m > weight
        colour = torch.where(only_m[:, None], colour_m, colour)
        seen = torch.maximum(seen, mirror_w / cfg.mirror_weight * weight_m / (weight_m + cfg.prior_visibility))
        weight = torch.maximum(weight, weight_m)
    dense = paint(dense, colour, weight, cfg.prior_visibility)

    params = FitParams(dense, None if anchors is None else anchors.to(device)[parents], s_max)
    prior = Prior.of(params, dense, s_max)
    trust = seen.detach().sqrt()  # partly seen silhouette Gaussians still need to move to match the outline
    unseen = 1.0 - trust

    def total_loss() -> tuple[Tensor, Tensor]:
        g = params.gaussians()
        cams = torch.stack([vm, vm_m]) if mirror_w > 0 else vm[None]
        out = rasterize(g, cams, K.expand(len(cams), 3, 3), size, size, backend=backend, check_finite=False)
        rgb, alpha = out.rgb.permute(0, 3, 1, 2), out.alpha.permute(0, 3, 1, 2)
        l1_input = (rgb[:1] - img).abs().mean()
        loss = view_loss(rgb[:1], alpha[:1], img, msk, cfg)
        if mirror_w > 0:
            loss = loss + mirror_w * view_loss(rgb[1:], alpha[1:], img.flip(-1), msk.flip(-1), cfg)
        return loss + cfg.prior_weight * prior.loss(g, unseen), l1_input

    fitted, losses, l1s = optimise(params, trust, total_loss, cfg, anchors is not None, progress)
    return FitResult(fitted, pose, cfg.steps, losses, l1s, time.perf_counter() - start,
                     float((seen > 0.5).float().mean()))


@dataclass
class Prior:
    """What barely seen Gaussians are pulled back to: the prediction's positions, colours and opacities."""

    pos: Tensor
    rgb: Tensor
    opacity: Tensor
    pos_unit: float
    """position distances in units of the anchored bound s_max (or 1 cm when positions are free)"""

    @classmethod
    def of(cls, params: FitParams, start: Gaussians, s_max: float | None) -> Prior:
        """``start``: the Gaussians ``params`` were made from (their colours unclamped)."""
        return cls(params.means().detach(), start.rgb.detach(), torch.sigmoid(start.opacity_logits.detach()),
                   float(s_max) if s_max else 0.01)

    def loss(self, g: Gaussians, weight: Tensor) -> Tensor:
        """Mean over Gaussians of ``weight`` x (squared position, colour and opacity distance to the prior)."""
        d_pos = ((g.means - self.pos) / self.pos_unit).square().sum(-1)
        d_rgb = (g.rgb - self.rgb).square().sum(-1)
        d_opa = (torch.sigmoid(g.opacity_logits) - self.opacity).square()
        return (weight * (d_pos + d_rgb + d_opa)).mean()


def optimise(params: FitParams, trust: Tensor, total_loss: Callable[[], tuple[Tensor, Tensor]], cfg: FitConfig,
             anchored: bool, progress: FitProgress | None,
             after_step: Callable[[], None] | None = None,
             position_trust: Tensor | None = None) -> tuple[Gaussians, list[float], tuple[float, float]]:
    """``cfg.steps`` Adam steps on ``total_loss() -> (loss, a monitored L1)``, each Gaussian's step scaled by
    its ``trust`` in [0, 1] (its position's by ``position_trust`` when given), then ``after_step()`` (a
    projection of the parameters, under no_grad). Returns the fitted Gaussians, the loss before every step
    and after the last, and the monitored L1 before and after. Raises :class:`FitDivergedError` on a
    NaN/infinite loss or parameter."""
    lr = cfg.lr
    opt = torch.optim.Adam([
        {"params": [params.pos], "lr": lr * cfg.lr_position * (1.0 if anchored else 0.01)},
        {"params": [params.log_scales], "lr": lr * cfg.lr_scale},
        {"params": [params.quats], "lr": lr * cfg.lr_rotation},
        {"params": [params.opacity_logits], "lr": lr * cfg.lr_opacity},
        {"params": [params.colour_logits], "lr": lr * cfg.lr_colour},
    ], eps=1e-15)
    losses: list[float] = []
    first_l1 = math.nan
    for step in range(cfg.steps):
        loss, l1 = total_loss()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FitDivergedError(f"the fit diverged at step {step} (loss {value}); nothing was written. "
                                   "Lower --fit-lr or use --fit-steps 0 for the network's result alone")
        if step == 0:
            first_l1 = float(l1.detach())
        losses.append(value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            before = [p.detach().clone() for p in params.parameters()]
            opt.step()
            # Adam's steps do not shrink with the gradient, so a Gaussian behind the face that a nearly
            # transparent front lets through a 1e-6 gradient would move as fast as a visible one: each
            # Gaussian's step is scaled by how well the input camera (or the mirror) sees it.
            for p, old in zip(params.parameters(), before, strict=True):
                t = position_trust if p is params.pos and position_trust is not None else trust
                p.copy_(old + t.view(-1, *[1] * (p.ndim - 1)) * (p - old))
            if after_step is not None:
                after_step()
        if progress is not None:
            progress(step + 1, cfg.steps, value)
    with torch.no_grad():
        final, l1 = total_loss()
        fitted = params.gaussians().detach()
    losses.append(float(final))
    try:
        fitted.check_finite()
    except ValueError as exc:
        raise FitDivergedError(f"the fit diverged: {exc}; nothing was written. Lower --fit-lr or use "
                               "--fit-steps 0 for the network's result alone") from exc
    if not math.isfinite(losses[-1]):
        raise FitDivergedError(f"the fit diverged (final loss {losses[-1]}); nothing was written")
    return fitted, losses, (first_l1, float(l1))


__all__ = ["FitConfig", "FitDivergedError", "FitParams", "FitProgress", "FitResult", "Prior", "child_grid",
           "densify", "fit_to_photo", "mirror_viewmat", "optimise", "paint", "photo_colours",
           "view_loss"]

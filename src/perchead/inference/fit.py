"""Test-time fitting: the network's head, refined against the photo it came from.

The feed-forward prediction is a complete head (back and top included) in the canonical frame, but a small
checkpoint cannot carry a real person's likeness by itself. As PanoHead/SphereHead users invert and splat
pipelines refine, :func:`fit_to_photo` refines the Gaussians against the matted input seen from the input
camera -- but only within the space of plausible heads, so that the sides and the back follow from one head
rather than from a picture painted for one camera (issue 28):

1. :func:`perchead.inference.pose.estimate_pose` -- the input camera's yaw and pitch relative to the
   predicted head (a photo is not always frontal; the network's head is canonical); then
   :func:`align_midline` moves it sideways until the photo's face midline lands on the head's (the crop is
   centred between the eyes, which on a turned face are not in front of the head's centre); then
   :func:`fit_head_height` stretches or squashes the head above the brows until its top meets the top of the
   photo's matte (the network gives every head one skull height; on a short-haired man it stood above his
   hair, and the fit, which cannot move grazing or hidden Gaussians, left a transparent arc between the two);
   :func:`fit_head_width` scales the skull to the matte's width at the temples, and :func:`fit_face_width`
   narrows the face in front of the ears to the photo's face oval (wider, the face took the photo's ear and
   hair along its outline, which showed across the cheek from 45 degrees round).
2. :func:`densify` -- every predicted Gaussian becomes a grid of ``k`` children inside its own covariance (the
   mixture keeps the parent's mean and covariance), so that the fitted head has the paper's 65,536 Gaussians;
   the children are no finer than the photo's pixels (:func:`child_shrink`: a photo smaller than the fit's
   renders gets coarser children).
3. :func:`project_appearance` -- appearance projected onto the geometry: Gaussians that the input camera sees
   take the colour of the photo pixels they contribute to (:func:`photo_colours`); a Gaussian whose mirror
   image through the template's left-right map (:func:`mirror_index`, through the photo's own face midline:
   :func:`photo_midline`) is seen better takes that one's colour (the far cheek from the near one); the rest
   of the skin (face, ears, neck) takes the colour its template region has where the photo shows it (a neck
   by its height: skin under the chin, the collar lower down), with as much of the network's shading on top as
   the photo bears out where it shows the region (:func:`shading_kept`), and the rest of the hair keeps the
   network's colours (it reads its input: the back already has the photo's hair colour);
   :attr:`FitConfig.repaint_regions`.
4. A bounded refinement (Adam) on the input view (L1 + SSIM and the matte as alpha): Gaussians move only
   along their template normal and within :attr:`FitConfig.normal_bound`, the children of one predicted
   Gaussian as one piece (:attr:`FitConfig.parent_motion`), their scales never grow past
   :attr:`FitConfig.max_scale_growth` times the prediction's (no stretching into the unseen depth), grazing
   Gaussians keep their opacity, barely seen ones are pulled back to where step 3 put them and take steps in
   proportion to how well they are seen, and renders of the step-3 head from unseen views are a weak target;
   optionally the photo is also the target of the input camera turned a degree or two either way
   (:attr:`FitConfig.jitter_weight`: paint that lines up from one camera only slides off there).
   When the photo's matte does not look like the predicted head from the estimated camera (the matte took the
   background, or the pose is off), the geometry is left alone, only colours are fitted, and
   :attr:`FitResult.warnings` says so.

Before step 2, :mod:`perchead.inference.tune` can tune the network's own weights on the photo
(:attr:`FitConfig.tune_steps`, off by default), so that the head these steps start from already has the
photo's shape as the network understands it.

Everything here is plain PyTorch on :func:`perchead.render.rasterize`, so it runs on any backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ..geometry import Gaussians
from ..geometry.gaussians import rgb_to_sh_dc
from ..geometry.head_surface import EARS, FACE, NECK, REGION_NAMES, SCALP
from ..losses.pixel import ssim
from ..render import RenderOutput, rasterize, render_features
from ..render.project import quat_to_rotmat
from .pose import Pose, camera_K, estimate_pose, resize_to

FitProgress = Callable[[int, int, float], None]
"""progress(step, steps, loss): called after every fitting step."""


class FitDivergedError(RuntimeError):
    """The fit produced a NaN or infinite loss or parameter; nothing is written."""


NOVEL_YAWS = (60.0, -60.0, 100.0, -100.0, 180.0)
"""degrees of yaw from the input camera of the unseen views whose renders are a weak target: of the step-3
head in the fit (the default of :attr:`FitConfig.novel_yaws`), of the untuned network's head while tuning the
network (:mod:`perchead.inference.tune`)"""


@dataclass
class FitConfig:
    """How the network's head is fitted to the photo (``steps``, ``size``, ``num_gaussians``, ``lr`` and
    ``symmetry`` are ``perchead reconstruct --fit-*`` options); ``steps=0`` gives the paper's pure feed-forward
    result."""

    steps: int = 60
    """optimisation steps (0: no fitting, the network's Gaussians as they are)"""
    tune_steps: int = 0
    """steps of test-time tuning of the network's weights on the photo's view before the Gaussians are fitted
    (:func:`perchead.inference.tune.tune_network`; 0: the network as trained; with ``steps`` 0, the tuned
    network's Gaussians are not fitted further). Off by default: it gains on held-out synthetic heads, is a wash
    by dlib on real photos and costs 7-10 s on two cores (docs/lab_notebook.md)"""
    tune_lr: float = 3e-4
    """Adam learning rate of the tuning"""
    tune_size: int = 128
    """side of the renders the tuning compares with the photo, pixels"""
    tune_novel_weight: float = 1.0
    """weight of the untuned network's renders from unseen views (:data:`NOVEL_YAWS`, one per step, at
    ``novel_size``) as a target while tuning: without it the tuned head explained a real photo's details by
    changing its sides and back (dark streaks in the hair, a cap's pattern round the head)"""
    size: int = 224
    """side of the renders the fit compares with the photo, pixels (224: the package-shipped portraits reach
    22 dB masked PSNR from the input camera, 192 falls short on one of them; benchmarks/bench_likeness.py)"""
    num_gaussians: int = 65536
    """Gaussians after densification (a multiple of the prediction's count; 0 or the prediction's: none)"""
    child_shrink: float | None = None
    """the densified children's size over their parent's, in (0, 1); None: as fine as the photo allows
    (:func:`child_shrink`: 0.5 for a photo at least as sharp as the fit's renders, coarser for a smaller one)"""
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
    symmetry: bool = True
    """colour a Gaussian the photo does not see from its mirror image through the template's left-right map
    when the photo sees that one (the far cheek of a turned face from the near one)"""
    normal_bound: float = 0.012
    """metres a Gaussian may move along its template normal (the silhouette of hair and cheeks), both ways"""
    tangent_bound: float = 0.003
    """metres a Gaussian may slide across the surface (features a few millimetres off the template's)"""
    parent_motion: bool = True
    """densified Gaussians move with the predicted Gaussian they were split from: one move per parent (along its
    template normal within ``normal_bound``, across within ``tangent_bound``) carries all its children, so the
    surface moves in pieces the size of the network's Gaussians and the outline matched from the input camera
    stays an outline a few degrees round, where 16 children moving on their own frayed it (held-out synthetic
    heads: docs/lab_notebook.md). The free regions' Gaussians still move on their own. False: every Gaussian
    on its own"""
    max_scale_growth: float = 1.5
    """a Gaussian's scale along any axis stays below this times the prediction's: one view cannot see how deep
    a Gaussian is, and a stretched one shows as a streak from the side"""
    free_regions: tuple[str, ...] = ("neck",)
    """template regions whose Gaussians keep the position head's whole anchored range and may grow up to
    ``free_scale_growth``: the template ends at the neck, and the photo's matte goes on into the shoulders and
    clothes, which the input view must still match"""
    free_scale_growth: float = 100.0
    free_min_outside: float = 0.15
    """the free regions are freed only when at least this share of the photo's matte lies outside the predicted
    head's silhouette from the input camera (shoulders, clothes: 21-31% on the package-shipped portraits it was
    tuned on); a matte that ends where the head does (a tight crop, a synthetic head: 0-11%) has nothing for
    them to reach, and freed there they smeared earrings and collars into streaks at +-45 degrees and cost
    0.16-0.29 dB from 30 degrees round to the back on held-out synthetic heads (docs/lab_notebook.md). 0:
    always freed"""
    free_min_facing: float = -0.3
    """of the free regions, only the Gaussians whose template normal makes a cosine above this with the ray to
    the input camera are freed (the front and the sides of the neck); the back of the neck, which no photo
    shows, is fitted as the head is: freed, it reached round for the shirt and tie and showed them from behind
    and from the side as coloured streaks down the neck (docs/lab_notebook.md). -1: the whole region"""
    grazing_cos: float = 0.35
    """Gaussians whose template normal makes a cosine below this with the ray to the camera keep their
    opacity (seen edge-on, the photo's silhouette would fade or thicken what the profiles see face-on)"""
    novel_weight: float = 0.2
    """weight of the renders of the step-3 head from the views ``novel_yaws`` as a target: one of them per
    step, at ``novel_size``"""
    novel_yaws: tuple[float, ...] = NOVEL_YAWS
    """degrees of yaw from the input camera of the views whose renders of the step-3 head are a weak target
    (the unseen sides and the back). Adding 25 degrees either way held the outline beside the input view on
    held-out synthetic heads (+0.12 dB near the input) but cost real photos up to 2.9 dB from their own camera,
    whose outline is not the network's (docs/lab_notebook.md): not by default"""
    novel_size: int = 64
    jitter_deg: float = 2.0
    """degrees by which the camera of a second render of the input view orbits the head, one way on one step and
    the other way on the next, when ``jitter_weight`` > 0"""
    jitter_weight: float = 0.0
    """weight of that render compared with the photo as the input view is (on a ``jitter_size`` render): what
    the steps paint for exactly one camera (a colour or a scale that lines up with the photo from there and
    nowhere else) slides off the photo a degree or two round, and what lies on the head where it should barely
    moves. At 0.5 it lifted every target-yaw bucket of held-out synthetic heads, near the input most (+1.84 ->
    +2.08 dB over the network), but lowered the input views of twelve real photos (by 0.55 dB on average, up
    to 2.0) and gave the same person at +-45 degrees on 11 of their 24 views (15 without): off by default
    (docs/lab_notebook.md)"""
    jitter_size: int = 112
    """side of that render, pixels"""
    min_silhouette_iou: float = 0.6
    """below this IoU between the photo's matte and the predicted head's silhouette from the estimated camera,
    the matte or the camera is not trusted: only colours are fitted, and a warning says so"""
    prior_weight: float = 1.0
    """pull of barely seen Gaussians back to the projected head (position in units of s_max, colour, opacity)"""
    prior_visibility: float = 0.5
    """compositing weight (pixels at ``size``) at which a Gaussian counts as half seen"""
    max_camera_shift: float = 0.06
    """metres the estimated input camera may move sideways so that the photo's face midline lands on the head's
    (:func:`align_midline`; the crop centres a turned face's eyes, not its head); 0: the camera as estimated. A
    given camera (``Pose.method == "given"``) is never moved"""
    max_height_change: float = 0.15
    """the head above the brows may be stretched or squashed vertically by up to this share so that its top
    meets the top of the photo's matte (:func:`fit_head_height`); 0: the network's height"""
    max_width_change: float = 0.15
    """the skull may be scaled horizontally (its width, and its depth behind the face) by up to this share so that
    its width at the temples meets the photo's matte's (:func:`fit_head_width`); 0: the network's width"""
    max_face_narrowing: float = 0.2
    """the head in front of the ears, from the eyes down, may be narrowed by up to this share so that the
    template's face region, seen from the camera, is no wider than the photo's face oval (Face Mesh;
    :func:`fit_face_width`); 0: the network's width. Never widened: a face widened to the oval (Obama 3, by 20%)
    lost 4 dB from its own camera (docs/lab_notebook.md)"""
    max_midline_offset: float = 0.045
    """metres: the left-right map mirrors through the photo's own face midline (:func:`photo_midline`) when it
    lands within this of the head's; farther, the face and the head disagree too much to mirror (no mirror,
    and a warning)"""
    repaint_regions: tuple[str, ...] = ("face", "ears", "neck")
    """template regions whose Gaussians that neither the photo nor their mirror image shows take the colour the
    photo shows of the region (with as much of the network's shading on top as the photo bears out,
    :func:`shading_kept`); the others keep the network's colours. The scalp is not among them: a network that
    reads its input (the bundled demo since issue 27) already gives the back the photo's hair, lit as a back
    is, and the top of the photo's hair painted onto the back cost 0.5-0.6 dB behind 105 degrees on held-out
    synthetic heads (docs/lab_notebook.md). The skin is: the network's skin beside the photo's showed as a seam
    at 45 degrees. All four regions: the fit before issue 27's network."""
    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"--fit-steps must be >= 0, got {self.steps}")
        if self.size < 32:
            raise ValueError(f"--fit-size must be at least 32 pixels, got {self.size}")
        if self.child_shrink is not None and not 0 < self.child_shrink < 1:
            raise ValueError(f"child_shrink must be in (0, 1) or None, got {self.child_shrink}")
        if (self.tune_steps < 0 or self.tune_size < 32 or not (math.isfinite(self.tune_lr) and self.tune_lr > 0)
                or not (math.isfinite(self.tune_novel_weight) and self.tune_novel_weight >= 0)):
            raise ValueError(f"need --fit-tune-steps >= 0, a tune size >= 32 px, a positive finite tune learning "
                             f"rate and a finite tune_novel_weight >= 0, got {self.tune_steps}, {self.tune_size}, "
                             f"{self.tune_lr} and {self.tune_novel_weight}")
        if not all(math.isfinite(y) for y in self.novel_yaws):
            raise ValueError(f"novel_yaws must be finite degrees, got {self.novel_yaws}")
        if self.num_gaussians < 0:
            raise ValueError(f"--fit-gaussians must be >= 0, got {self.num_gaussians}")
        rates = {k: v for k, v in asdict(self).items() if k.startswith("lr")}
        bad = {k: v for k, v in rates.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"fitting learning rates must be positive and finite, got {bad}")
        weights = {k: getattr(self, k) for k in ("ssim_weight", "alpha_weight", "prior_weight", "novel_weight",
                                                 "normal_bound", "tangent_bound")}
        if any(not (math.isfinite(v) and v >= 0) for v in weights.values()) or self.ssim_weight > 1:
            raise ValueError(f"fitting weights must be >= 0 (ssim_weight <= 1), got {weights}")
        for name in ("free_regions", "repaint_regions"):
            unknown = [r for r in getattr(self, name) if r not in REGION_NAMES]
            if unknown:
                raise ValueError(f"{name} must be among {REGION_NAMES}, got {unknown}")
        for name in ("max_height_change", "max_width_change", "max_face_narrowing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a share of the head's size, in [0, 1); got {getattr(self, name)}")
        if not -1.0 <= self.free_min_facing <= 1.0:
            raise ValueError(f"free_min_facing is a cosine, in [-1, 1]; got {self.free_min_facing}")
        if not 0.0 <= self.free_min_outside <= 1.0:
            raise ValueError(f"free_min_outside is a share of the matte, in [0, 1]; got {self.free_min_outside}")
        if not (math.isfinite(self.jitter_deg) and math.isfinite(self.jitter_weight) and self.jitter_weight >= 0
                and self.jitter_size >= 16):
            raise ValueError(f"need a finite jitter_deg, a finite jitter_weight >= 0 and jitter_size >= 16, got "
                             f"{self.jitter_deg}, {self.jitter_weight} and {self.jitter_size}")
        if not (self.max_scale_growth >= 1 and self.free_scale_growth >= 1) or self.novel_size < 16:
            raise ValueError(f"need max_scale_growth >= 1 and novel_size >= 16, got {self.max_scale_growth} "
                             f"and {self.novel_size}")


CHILD_SHRINK = 0.5
"""child standard deviation / parent's along the parent's two largest axes (the children tile that plane; the
third, thinnest axis is kept): 16 children then draw 16 x 0.25 = 4 times the parent's footprint, not 16. The
finest children the fit makes: see :func:`child_shrink` for photos coarser than the fit's renders."""
MAX_CHILD_SHRINK = 0.9
"""the coarsest children :func:`child_shrink` makes (at 1 they would all be the parent)"""


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
    silhouette_iou: float = math.nan
    """IoU of the photo's matte and the predicted head's silhouette from the input camera (:func:`head_iou`)"""
    geometry_fitted: bool = True
    """False when the matte or the camera was not trusted and only colours were fitted"""
    warnings: list[str] = field(default_factory=list)
    midline: float | None = None
    """:func:`photo_midline` (metres; the plane the far side was mirrored through), None when not measured"""
    matte_outside: float = math.nan
    """share of the photo's matte outside the predicted head's silhouette from the input camera"""
    free_regions_freed: bool = False
    """whether :attr:`FitConfig.free_regions` were freed (:attr:`FitConfig.free_min_outside`)"""
    height_scale: float = 1.0
    """the vertical scale :func:`fit_head_height` gave the head above the brows (1: unchanged)"""
    width_scale: float = 1.0
    """the horizontal scale :func:`fit_head_width` gave the skull (1: unchanged)"""
    face_width_scale: float = 1.0
    """the horizontal scale :func:`fit_face_width` gave the face (1: unchanged or not fitted)"""
    child_shrink: float = CHILD_SHRINK
    """the densified children's size over their parent's (:func:`child_shrink`: coarser for a coarse photo)"""
    tune_losses: list[float] = field(default_factory=list)
    """the network's test-time tuning (:mod:`perchead.inference.tune`): its loss before each step and after
    the last (empty: not tuned)"""

    def metadata(self, config: FitConfig) -> dict:
        hist = self.losses
        keep = sorted({0, len(hist) - 1, *range(0, len(hist), max(1, len(hist) // 10))}) if hist else []
        return {"ran": self.steps > 0, "steps": self.steps, "size": config.size,
                "num_gaussians": len(self.gaussians), "seconds": round(self.seconds, 3),
                "loss_first": round(hist[0], 6) if hist else None, "loss_last": round(hist[-1], 6) if hist else None,
                "loss_curve": [[i, round(hist[i], 6)] for i in keep],
                "input_l1_before": round(self.input_l1[0], 6), "input_l1_after": round(self.input_l1[1], 6),
                "seen_fraction": round(self.seen_fraction, 4),
                "silhouette_iou": None if math.isnan(self.silhouette_iou) else round(self.silhouette_iou, 4),
                "geometry_fitted": self.geometry_fitted, "warnings": list(self.warnings),
                "midline_mm": None if self.midline is None else round(self.midline * 1000, 2),
                "matte_outside": None if math.isnan(self.matte_outside) else round(self.matte_outside, 4),
                "free_regions_freed": self.free_regions_freed, "height_scale": round(self.height_scale, 4),
                "width_scale": round(self.width_scale, 4), "face_width_scale": round(self.face_width_scale, 4),
                "child_shrink": round(self.child_shrink, 4),
                "tune_steps": max(0, len(self.tune_losses) - 1),
                "tune_loss_first": round(self.tune_losses[0], 6) if self.tune_losses else None,
                "tune_loss_last": round(self.tune_losses[-1], 6) if self.tune_losses else None,
                "config": {k: v for k, v in asdict(config).items()}}


# -- the template's left-right map --------------------------------------------------------------------------


def mirror_index(points: Tensor, parents: Tensor | None = None, offsets: Tensor | None = None,
                 plane_x: float = 0.0) -> Tensor:
    """[N] index of the point nearest to each point's mirror image in the plane x = ``plane_x`` (metres; 0: the
    head's own midline) (left <-> right).

    ``points`` [P, 3] are the template's (or the prediction's) points. With ``parents`` [N] (children made by
    :func:`densify`, ``k`` contiguous children per parent) and the children's ``offsets`` [N, 3] from their
    parent, the map is of the children: child i of parent p goes to the child of p's mirror whose offset is
    nearest to i's offset mirrored (the children grids of mirrored parents are not laid out alike)."""
    flip = torch.tensor([-1.0, 1.0, 1.0], device=points.device)
    shift = torch.tensor([2.0 * plane_x, 0.0, 0.0], device=points.device)
    mirror = torch.cat([torch.cdist(chunk * flip + shift, points).argmin(-1) for chunk in points.split(4096)])
    if parents is None:
        return mirror
    if offsets is None:
        raise ValueError("mirror_index: give the children's offsets with their parents")
    k = len(parents) // len(points)
    candidates = mirror[parents][:, None] * k + torch.arange(k, device=points.device)  # [N, k]
    d = (offsets[candidates] - (offsets * flip)[:, None]).square().sum(-1)
    return candidates.gather(1, d.argmin(-1, keepdim=True))[:, 0]


# -- 2. densify ----------------------------------------------------------------------------------------------
CHILD_OPTICAL_DEPTH = 0.5
"""share of the parent's optical depth that the children's opacities add up to through its centre: less than
1 because neighbouring parents' children overlap along a ray as well. Chosen by rendering the demo's
prediction of the example photo from the front, a profile and the back before and after splitting 4,096 into
65,536 (shrink 0.4-0.6 x share 0.4-1.0): 0.5 / 0.5 gave 27.8-28.8 dB PSNR at a third less render time than
0.6 / 0.6 (29 dB); see tests/test_fit.py for the tolerance."""


def child_shrink(upsampling: float) -> float:
    """The children's size over their parent's (:func:`densify`'s ``shrink``) for a photo that the fit's
    renders see ``upsampling`` times enlarged (the fit's side over the photo's own pixels): no finer than
    those pixels, from :data:`CHILD_SHRINK` up to :data:`MAX_CHILD_SHRINK`, as Mip-Splatting bounds a
    Gaussian's size by the sampling rate of the views that see it. A photo at least as sharp as the renders
    gets the finest children; a 128 px synthetic view fitted at 224 px (1.75) gets 0.875: the finest children
    took on the interpolation between its pixels, which turned views do not bear out (held-out synthetic
    heads: docs/lab_notebook.md)."""
    if not upsampling > 0:
        raise ValueError(f"upsampling must be positive, got {upsampling}")
    return min(MAX_CHILD_SHRINK, CHILD_SHRINK * max(1.0, upsampling))


def child_grid(m: int, shrink: float = CHILD_SHRINK) -> Tensor:
    """[m*m, 2] offsets of an m x m grid with mean 0 and per-axis variance 1 - shrink^2: with children of
    standard deviation ``shrink``, the mixture keeps the parent's mean and covariance in that plane."""
    if m == 1:
        return torch.zeros(1, 2)
    t = torch.arange(m, dtype=torch.float32) - (m - 1) / 2
    t = t * math.sqrt((1 - shrink**2) / float((t**2).mean()))
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(m * m, 2)


def densify(gaussians: Gaussians, num: int, shrink: float = CHILD_SHRINK) -> tuple[Gaussians, Tensor]:
    """Split every Gaussian into ``k = num / len(gaussians)`` children (k a square: 4, 9, 16, ...) inside its
    own covariance.

    The children form a sqrt(k) x sqrt(k) grid in the plane of the parent's two largest axes
    (:func:`child_grid`), each ``shrink`` times the parent's size along them (in (0, 1); :func:`child_shrink`),
    so the mixture has the parent's mean and covariance; each child's opacity makes the children's summed
    optical depth through the parent's centre :data:`CHILD_OPTICAL_DEPTH` of the parent's
    (``1 - (1 - o)^(0.5 / (k shrink^2))``). Returns the children and each child's parent index.
    """
    if not 0 < shrink < 1:
        raise ValueError(f"the children's shrink must be in (0, 1), got {shrink}")
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
    u = torch.zeros_like(g.means).scatter_(1, largest, child_grid(m, shrink).to(g.means).repeat(n, 1))
    shrinks = torch.ones_like(g.means).scatter_(1, largest, shrink)
    offsets = (quat_to_rotmat(g.quats) @ (scales * u).unsqueeze(-1)).squeeze(-1)
    o = g.opacities.clamp(1e-6, 1 - 1e-6)
    child_o = 1.0 - (1.0 - o) ** (CHILD_OPTICAL_DEPTH / (k * shrink**2))
    return g.replace(means=g.means + offsets, log_scales=g.log_scales + torch.log(shrinks),
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


MIDLINE_LANDMARK_MM = 2.0
"""Face Mesh landmarks whose point in the canonical landmark model lies within this of x = 0 mark the midline
(28 of the 478: forehead, nose ridge, philtrum, lips, chin)"""


def photo_landmarks(image: Tensor, mask: Tensor) -> np.ndarray | None:
    """[478, 2] (x, y) pixels of MediaPipe Face Mesh's landmarks in ``image`` [3, S, S] composited on white with
    ``mask``; None when Face Mesh finds no face."""
    from ..io import to_uint8
    from ..preprocess.detect import face_mesh_landmarks

    matted = image * mask + (1 - mask)
    return face_mesh_landmarks(np.ascontiguousarray(to_uint8(matted.detach().cpu().permute(1, 2, 0))))


def midline_pixels(image: Tensor, mask: Tensor, landmarks: np.ndarray | None = None) -> Tensor | None:
    """[M, 2] (x, y) pixels of the photo's face midline: MediaPipe Face Mesh's landmarks (``landmarks``, or
    :func:`photo_landmarks` of ``image`` and ``mask``) whose point in the canonical landmark model lies on x = 0
    (:data:`MIDLINE_LANDMARK_MM`); None when Face Mesh finds no face."""
    from .pose import landmark_model

    points = photo_landmarks(image, mask) if landmarks is None else landmarks
    if points is None:
        return None
    on_midline = np.abs(landmark_model()[:, 0]) < MIDLINE_LANDMARK_MM / 1000
    return torch.from_numpy(points[on_midline].round().astype(np.int64)).clamp(0, image.shape[-1] - 1)


def photo_midline(gaussians: Gaussians, viewmat: Tensor, image: Tensor, mask: Tensor, backend: str = "auto",
                  pixels: Tensor | None = None) -> float | None:
    """Where the photo's face midline lands on the head: the median canonical x (metres) of the Gaussians drawn
    at the photo's midline landmarks (:func:`midline_pixels`, or ``pixels`` when given) seen from ``viewmat``;
    None when Face Mesh finds no face or fewer than 8 of those landmarks fall on the head.

    0 when the photo's face sits on the head's midline. On turned photos it does not: the crop is centred
    between the eyes, which a turned face has to one side of the head's centre, so the photo's nose landed
    13-35 mm to the side of the network's (real photos turned 13-36 degrees), and a mirror through the head's
    midline painted a second face beside the first (issue 28)."""
    pixels = midline_pixels(image, mask) if pixels is None else pixels
    if pixels is None:
        return None
    size = image.shape[-1]
    g = gaussians.detach()
    K = camera_K(size).to(g.means)
    with torch.no_grad():
        x, alpha = render_features(g, g.means[:, :1].contiguous(), viewmat.to(g.means)[None], K[None], size, size,
                                   backend=backend)
    a = alpha[0, pixels[:, 1], pixels[:, 0], 0]
    xs = x[0, pixels[:, 1], pixels[:, 0], 0] / a.clamp_min(1e-6)
    on_head = a > 0.5
    if int(on_head.sum()) < 8:
        return None
    return float(xs[on_head].median())


MIDLINE_SLOPE = 0.8
"""mm the midline moves per mm of sideways camera shift (0.6-0.9 measured on real photos, less when turned)"""


def align_midline(gaussians: Gaussians, pose: Pose, image: Tensor, mask: Tensor, max_shift: float,
                  backend: str = "auto", iterations: int = 4,
                  pixels: Tensor | None = None) -> tuple[Pose, float | None]:
    """The input camera moved sideways until the photo's face midline lands on the head's (:func:`photo_midline`
    near 0): up to ``iterations`` steps of midline / :data:`MIDLINE_SLOPE`, the shift within ``max_shift``
    metres; a step after which the midline is no longer on the head is not taken. ``pixels``: the photo's
    :func:`midline_pixels`, when already found. Returns the camera and its midline (None: no face found; the
    camera as it was).

    Measured on real photos (the network's head, 224 px): a turned man's midline at +29.5 mm from the estimated
    camera, +11.0 with the camera 3 cm to the side, and the head's silhouette IoU with the photo's matte
    0.63 -> 0.70 with it; on the frontal astronaut both best where the midline is 0 (no shift)."""
    pixels = midline_pixels(image, mask) if pixels is None else pixels
    if pixels is None:
        return pose, None
    current = photo_midline(gaussians, pose.viewmat, image, mask, backend, pixels)
    for _ in range(iterations):
        if current is None or abs(current) < 0.002:
            break
        moved = replace(pose, shift_m=max(-max_shift, min(max_shift, pose.shift_m + current / MIDLINE_SLOPE)))
        after = photo_midline(gaussians, moved.viewmat, image, mask, backend, pixels)
        if after is None or moved.shift_m == pose.shift_m:
            break
        pose, current = moved, after
    return pose, current


def _trusted_silhouette(gaussians: Gaussians, regions: Tensor, also: tuple[int, ...], viewmat: Tensor, K: Tensor,
                       mask: Tensor, min_iou: float, backend: str = "auto") -> tuple[Tensor, Tensor] | None:
    """The head seen from ``viewmat`` at the size of ``mask`` [S, S]: its alpha [S, S] and the share of it [S, S,
    1 + len(also)] of the neck region (what :func:`head_iou` leaves out) and of each region id in ``also``; None
    where the silhouette IoU with the matte is below ``min_iou`` (the matte or the camera is not trusted), so
    that the head's size is fitted only to a matte of this head."""
    size = mask.shape[-1]
    feats = torch.stack([(regions == r).float() for r in (NECK, *also)], -1)
    with torch.no_grad():
        share, alpha = render_features(gaussians.detach(), feats, viewmat[None], K[None], size, size,
                                       backend=backend)
    alpha = alpha[0, ..., 0]
    share = share[0] / alpha[..., None].clamp_min(1e-6)
    if head_iou(alpha, share[..., 0], mask) < min_iou:
        return None
    return alpha, share


HEIGHT_TOLERANCE_PX = 1.0
"""pixels (at the fit's size) by which the head's top and the matte's may differ before :func:`fit_head_height`
acts: on held-out synthetic heads, whose matte is their own silhouette, they differ by at most one pixel at
224 px, and acting on that pixel cost up to 0.08 dB on four of them (docs/lab_notebook.md)"""


def fit_head_height(gaussians: Gaussians, anchors: Tensor | None, regions: Tensor, viewmat: Tensor, K: Tensor,
                    mask: Tensor, max_change: float, min_iou: float = 0.0,
                    backend: str = "auto") -> tuple[Gaussians, Tensor | None, float]:
    """The head above its brows scaled vertically so that its top, seen from ``viewmat``, meets the top of the
    photo's matte (``mask`` [S, S]) over the central half of the head's width: the network gives every head
    one skull height, and where it stands above a short-haired man's hair the fit cannot take it down (its
    grazing Gaussians keep their opacity, occluded ones hardly move), which left a transparent arc between
    hair and skull. The brows (the upper quarter of the template's face region) are the pivot, so that the
    face, which the crop aligned with the photo's, stays. The scale stays within 1 +- ``max_change``; nothing
    changes where the tops differ by at most :data:`HEIGHT_TOLERANCE_PX`, or where the head's silhouette IoU
    with the matte is below ``min_iou`` (the matte or the camera is not trusted). ``regions`` [N]: template
    region ids; the anchors, when given, are scaled with the means. Returns the Gaussians, the anchors and
    the scale."""
    size = mask.shape[-1]
    seen = _trusted_silhouette(gaussians, regions, (), viewmat, K, mask, min_iou, backend)
    if seen is None:
        return gaussians, anchors, 1.0
    head, matte = seen[0] > 0.5, mask > 0.5
    cols = torch.nonzero(head.any(0))[:, 0]
    if len(cols) < 8:
        return gaussians, anchors, 1.0
    lo, hi = int(cols.min()), int(cols.max())
    lo, hi = lo + (hi - lo) // 4, hi - (hi - lo) // 4
    rows = torch.arange(size, device=mask.device, dtype=torch.float32)[:, None]
    top_head = torch.where(head[:, lo:hi + 1], rows, size).amin(0)
    top_matte = torch.where(matte[:, lo:hi + 1], rows, size).amin(0)
    both = (top_head < size) & (top_matte < size)
    if int(both.sum()) < 4:
        return gaussians, anchors, 1.0
    lower_px = float((top_matte - top_head)[both].median())  # > 0: the head stands above the matte
    if abs(lower_px) <= HEIGHT_TOLERANCE_PX:
        return gaussians, anchors, 1.0
    points = gaussians.means.detach() if anchors is None else anchors
    face = points[regions == FACE, 1]
    pivot = float(face.quantile(0.75)) if len(face) else float(points[:, 1].median())
    top = float(points[:, 1].max())
    depth = float((points @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2].median())
    lower = lower_px * depth / float(K[0, 0])  # metres at the head's depth (the world's y is up)
    scale = min(1 + max_change, max(1 - max_change, (top - pivot - lower) / max(top - pivot, 1e-6)))

    def scaled(p: Tensor) -> Tensor:
        y = p[:, 1:2]
        return torch.cat([p[:, :1], torch.where(y > pivot, pivot + scale * (y - pivot), y), p[:, 2:]], -1)

    return (gaussians.replace(means=scaled(gaussians.means)), None if anchors is None else scaled(anchors),
            scale)


WIDTH_TOLERANCE_PX = 2.0
"""pixels (at the fit's size) by which the head's width at the temples and the matte's may differ before
:func:`fit_head_width` acts"""


def _run_width(row: np.ndarray, col: int) -> int:
    """Length of the run of True in ``row`` through column ``col`` (0 where it is False)."""
    if not row[col]:
        return 0
    left = np.flatnonzero(~row[:col])
    right = np.flatnonzero(~row[col:])
    return (col + (int(right[0]) if len(right) else len(row) - col)) - (int(left[-1]) + 1 if len(left) else 0)


def fit_head_width(gaussians: Gaussians, anchors: Tensor | None, regions: Tensor, viewmat: Tensor, K: Tensor,
                   mask: Tensor, max_change: float, min_iou: float = 0.0,
                   backend: str = "auto") -> tuple[Gaussians, Tensor | None, float]:
    """The skull scaled horizontally so that its width seen from ``viewmat`` at the temples meets the width of
    the photo's matte there: the network gives every head about one skull size, wider than a short-haired
    man's head (its outline then stood behind his face at +-45 degrees as a second head) and narrower than a
    bob. Measured on the rows between the brows (a fifth of the way down the face region's rows) and 30% of the way up
    to the head's top, each row's run of the silhouette and of the matte through the head's centre column,
    where neither ears nor shoulders reach; the scale is the median of matte / head over those rows, within 1
    +- ``max_change``, and nothing changes where the widths differ by at most :data:`WIDTH_TOLERANCE_PX` or
    where the silhouette IoU with the matte is below ``min_iou``. The scale applies to x (about the head's
    midline) and to the depth behind the face's front (a narrower skull is a shorter one), in full above the
    brows and fading to none at the lower quarter of the face, so that the face the crop aligned stays and the
    head has no seam. ``regions`` [N]: template region ids; the anchors, when given, move with the means.
    Returns the Gaussians, the anchors and the scale."""
    seen = _trusted_silhouette(gaussians, regions, (FACE,), viewmat, K, mask, min_iou, backend)
    if seen is None:
        return gaussians, anchors, 1.0
    alpha, share = seen
    head, matte = (alpha > 0.5).cpu().numpy(), (mask > 0.5).cpu().numpy()
    face_rows = np.flatnonzero((head & (share[..., 1] > 0.5).cpu().numpy()).any(1))
    head_rows = np.flatnonzero(head.any(1))
    if len(face_rows) < 8:
        return gaussians, anchors, 1.0
    brow = int(face_rows[0] + 0.2 * (face_rows[-1] - face_rows[0]))
    if not head[brow].any():
        return gaussians, anchors, 1.0
    centre = int(np.flatnonzero(head[brow]).mean())
    widths = [(_run_width(head[y], centre), _run_width(matte[y], centre))
              for y in range(int(head_rows[0] + 0.3 * (brow - head_rows[0])), brow + 1)]
    widths = np.array([w for w in widths if w[0] > 0 and w[1] > 0], dtype=np.float64).reshape(-1, 2)
    if len(widths) < 4 or abs(float(np.median(widths[:, 0] - widths[:, 1]))) <= WIDTH_TOLERANCE_PX:
        return gaussians, anchors, 1.0
    scale = min(1 + max_change, max(1 - max_change, float(np.median(widths[:, 1] / widths[:, 0]))))
    points = gaussians.means.detach() if anchors is None else anchors
    face = points[regions == FACE]
    low, pivot = float(face[:, 1].quantile(0.25)), float(face[:, 1].quantile(0.75))
    front = float(face[:, 2].quantile(0.9))

    def scaled(p: Tensor) -> Tensor:
        f = 1 + (scale - 1) * ((p[:, 1:2] - low) / max(pivot - low, 1e-6)).clamp(0, 1)
        return torch.cat([p[:, :1] * f, p[:, 1:2], p[:, 2:3] + (f - 1) * (p[:, 2:3] - front)], -1)

    return (gaussians.replace(means=scaled(gaussians.means)), None if anchors is None else scaled(anchors),
            scale)


FACE_WIDTH_TOLERANCE = 0.01
"""a face whose width and the photo's face oval's differ by less than this share is left as it is"""
EYE_CORNERS = (33, 133, 263, 362)
"""Face Mesh's landmarks at the corners of the eyes"""
CHIN = 152


def fit_face_width(gaussians: Gaussians, anchors: Tensor | None, regions: Tensor, viewmat: Tensor, K: Tensor,
                   mask: Tensor, landmarks: np.ndarray | None, max_narrowing: float, max_widening: float = 0.0,
                   min_iou: float = 0.0, backend: str = "auto",
                   iterations: int = 2) -> tuple[Gaussians, Tensor | None, float]:
    """The face scaled horizontally so that the template's face region, seen from ``viewmat``, is as wide as
    the photo's face oval (Face Mesh's, from ``landmarks`` [478, 2] at the size of ``mask`` [S, S]): the
    network's face region reached 12-13 px (at 224 px) past a turned man's face on either side, and from 45
    degrees round the photo's band along the face's outline (ear, hair) showed across the cheek.

    Measured on the rows from the eyes to three quarters of the way to the chin: the median of oval width /
    face-region width; the scale stays within [1 - ``max_narrowing``, 1 + ``max_widening``] (the fit only
    narrows: widened, a face lost 4 dB from its own camera). It applies to x about the head's midline, in full
    below the eyes (their height on the head read at the eye-corner landmarks) and fading to none at the brows
    (the upper quarter of the face region, where :func:`fit_head_width` acts), and in full in front of the face's
    median depth, fading to none at the ears' depth, so that the ears and the hair beside the face, which the
    matte's outline fitted, stay. Applied twice, each time measured anew. Nothing changes where Face Mesh found no
    face, the widths differ by less than :data:`FACE_WIDTH_TOLERANCE`, or the head's silhouette IoU with the
    matte is below ``min_iou``. Returns the Gaussians, the anchors and the scale."""
    size = mask.shape[-1]
    if landmarks is None or max_narrowing <= 0 and max_widening <= 0:
        return gaussians, anchors, 1.0
    from ..preprocess.detect import face_oval_mask

    oval = face_oval_mask(landmarks, (size, size))
    eye_row = float(landmarks[[EYE_CORNERS[0], EYE_CORNERS[2]], 1].mean())
    rows = range(max(0, int(eye_row)), min(size, int(eye_row + 0.75 * (landmarks[CHIN, 1] - eye_row))))
    corners = torch.from_numpy(landmarks[list(EYE_CORNERS)].round().astype(np.int64)).clamp(0, size - 1)
    total = 1.0
    for _ in range(iterations):
        seen = _trusted_silhouette(gaussians, regions, (FACE,), viewmat, K, mask, min_iou, backend)
        if seen is None:
            break
        alpha, share = seen
        face = ((alpha > 0.5) & (share[..., 1] > 0.5)).cpu().numpy()
        ratios = []
        for y in rows:
            o, f = np.flatnonzero(oval[y]), np.flatnonzero(face[y])
            if len(o) > 4 and len(f) > 4:
                ratios.append((o[-1] - o[0] + 1) / (f[-1] - f[0] + 1))
        if len(ratios) < 4:
            break
        scale = min(1 + max_widening, max(1 - max_narrowing, total * float(np.median(ratios)))) / total
        if abs(scale - 1) < FACE_WIDTH_TOLERANCE:
            break
        g = gaussians.detach()
        with torch.no_grad():
            y, a = render_features(g, g.means[:, 1:2].contiguous(), viewmat[None], K[None], size, size,
                                   backend=backend)
        a_eye = a[0, corners[:, 1], corners[:, 0], 0]
        points = g.means if anchors is None else anchors
        face_points = points[regions == FACE]
        brow = float(face_points[:, 1].quantile(0.75))
        if int((a_eye > 0.5).sum()) < 2 or not bool((regions == EARS).any()):
            break
        eye = float((y[0, corners[:, 1], corners[:, 0], 0] / a_eye.clamp_min(1e-6))[a_eye > 0.5].median())
        front, ears = float(face_points[:, 2].median()), float(points[regions == EARS, 2].median())
        if eye >= brow or ears >= front:
            break

        def scaled(p: Tensor, scale: float = scale, eye: float = eye, brow: float = brow, front: float = front,
                   ears: float = ears) -> Tensor:
            f = (((brow - p[:, 1:2]) / (brow - eye)).clamp(0, 1) * ((p[:, 2:3] - ears) / (front - ears)).clamp(0, 1))
            return torch.cat([p[:, :1] * (1 + (scale - 1) * f), p[:, 1:]], -1)

        gaussians = gaussians.replace(means=scaled(gaussians.means))
        anchors = None if anchors is None else scaled(anchors)
        total *= scale
    return gaussians, anchors, total


def paint(gaussians: Gaussians, colour: Tensor, weight: Tensor, prior_visibility: float) -> Gaussians:
    """Blend each Gaussian's colour toward ``colour`` by how well it is seen (``weight`` pixels of compositing
    weight, half way at ``prior_visibility``): unseen ones keep the prediction's."""
    blend = (weight / (weight + prior_visibility))[:, None]
    return gaussians.replace(sh=rgb_to_sh_dc(blend * colour + (1 - blend) * gaussians.rgb).unsqueeze(-2))


REGION_FALLBACK = {EARS: FACE, NECK: FACE}
"""a region the photo does not show takes the colour of this one (ears under hair, a neck in shadow: skin)"""
BANDED = {NECK: 4}
"""regions whose unseen part takes the colour the photo shows at its height (:func:`banded_colour`, this many
bands): what a photo shows of a neck is skin under the chin and a collar, a shirt or long hair lower down, and
one median of all of it painted the back of a suited man's neck grey"""
SHADING_KEPT = 0.5
"""share of the network's own colour variation (about its region's mean) kept on the Gaussians coloured by
their region where the photo shows too little of the region to tell (:func:`shading_kept`)"""


MIN_SEEN = 16
"""a region (or band) with fewer well seen Gaussians than this says nothing of the photo: neither its colour
(:func:`region_colour`) nor how much of the network's shading to keep (:func:`shading_kept`)"""


def region_colour(colour: Tensor, seen: Tensor, height: Tensor, top_only: bool) -> Tensor | None:
    """The per-channel median photo colour of the well seen Gaussians of a region (``top_only``: of the upper
    half of them, the hair rather than a forehead the template calls scalp), None when fewer than
    :data:`MIN_SEEN` are seen."""
    sel = seen > 0.5
    if top_only and int(sel.sum()) >= 32:
        sel = sel & (height >= height[sel].median())
    if int(sel.sum()) < MIN_SEEN:
        return None
    return colour[sel].median(0).values


def shading_kept(pred: Tensor, colour: Tensor, seen: Tensor, default: float = SHADING_KEPT) -> float:
    """How much of the network's colour variation within a region the photo bears out: the least-squares slope
    of the photo's colours on the network's (each about its mean, all channels pooled) over the region's well
    seen Gaussians, within [0, 1]; ``default`` when fewer than :data:`MIN_SEEN` are seen. The face's slope has
    a median of 0.37 on held-out synthetic heads, the network's own domain, and of 0.07 on twelve real photos
    (-0.35 to 0.26): there the network's shading is a generic face's, whose eyes and mouth are not the photo's."""
    sel = seen > 0.5
    if int(sel.sum()) < MIN_SEEN:
        return default
    x = pred[sel] - pred[sel].mean(0)
    y = colour[sel] - colour[sel].mean(0)
    return float(((x * y).sum() / (x * x).sum().clamp_min(1e-12)).clamp(0.0, 1.0))


def banded_colour(colour: Tensor, seen: Tensor, height: Tensor, bands: int, default: Tensor) -> Tensor:
    """[N, 3] colours by height: the :func:`region_colour` of each of ``bands`` bands of equal count, linearly
    between the bands' middles (a hard step at each band's edge showed as stripes round the neck) and constant
    beyond the outer ones; ``default`` where no band has enough seen Gaussians."""
    edges = torch.quantile(height, torch.linspace(0, 1, bands + 1, device=height.device)[1:-1])
    band = torch.bucketize(height.contiguous(), edges)
    middles, colours = [], []
    for b in range(bands):
        in_band = band == b
        c = region_colour(colour[in_band], seen[in_band], height[in_band], False)
        if c is not None:
            middles.append(height[in_band].median())
            colours.append(c)
    if not colours:
        return default.expand(len(height), 3)
    hs, cs = torch.stack(middles), torch.stack(colours)
    if len(hs) == 1:
        return cs[0].expand(len(height), 3)
    x = height.clamp(hs[0], hs[-1]).contiguous()
    i = torch.searchsorted(hs, x).clamp(1, len(hs) - 1)
    t = ((x - hs[i - 1]) / (hs[i] - hs[i - 1]).clamp_min(1e-9)).clamp(0, 1)[:, None]
    return cs[i - 1] + t * (cs[i] - cs[i - 1])


def project_appearance(gaussians: Gaussians, colour: Tensor, weight: Tensor, prior_visibility: float,
                       regions: Tensor | None = None, mirror: Tensor | None = None,
                       repaint: Collection[int] | None = None) -> tuple[Gaussians, Tensor]:
    """Colours of the Gaussians projected from the photo (step 3 of the module docstring).

    ``colour``, ``weight``: :func:`photo_colours` from the input camera. ``mirror``: :func:`mirror_index` of
    the Gaussians (None: no symmetry). ``regions`` [N]: each Gaussian's template region
    (:data:`~perchead.geometry.head_surface.REGION_NAMES`; None: the head is one region). ``repaint``: the
    region ids whose unseen part takes the colour the photo shows of the region (None: every region); the
    others keep the network's colours there (:attr:`FitConfig.repaint_regions`). Returns the
    repainted Gaussians and how well each one's colour is known from the photo (in [0, 1], its mirror's
    included): the fit steps each Gaussian in proportion to it."""
    seen = weight / (weight + prior_visibility)
    if mirror is not None:
        by_mirror = seen[mirror] > seen
        colour = torch.where(by_mirror[:, None], colour[mirror], colour)
        seen = torch.maximum(seen, seen[mirror])
    pred = gaussians.rgb
    regions = torch.zeros(len(pred), dtype=torch.long, device=pred.device) if regions is None else regions
    height = gaussians.means[:, 1]
    known = {int(r): region_colour(colour[regions == r], seen[regions == r], height[regions == r], int(r) == SCALP)
             for r in regions.unique()}
    unseen = pred.clone()
    for r in known:
        target = known[r] if known[r] is not None else known.get(REGION_FALLBACK.get(r, -1))
        if target is None or (repaint is not None and r not in repaint):
            continue  # nothing of it in the photo, or the network's colour kept: the network's colour
        sel = regions == r
        if r in BANDED:
            target = banded_colour(colour[sel], seen[sel], height[sel], BANDED[r], target)
        kept = shading_kept(pred[sel], colour[sel], seen[sel])
        unseen[sel] = target + kept * (pred[sel] - pred[sel].mean(0))
    rgb = seen[:, None] * colour + (1 - seen[:, None]) * unseen.clamp(0, 1)
    return gaussians.replace(sh=rgb_to_sh_dc(rgb.clamp(0, 1)).unsqueeze(-2)), seen


def template_inputs(model) -> dict:
    """``fit_to_photo``'s template arguments for a :class:`~perchead.model.PercHead` (anchors, s_max, normals,
    regions of its template decoder; none for other decoders: positions free, no symmetry, one region)."""
    if model.config.decoder != "template":
        return {}
    anchors, normals = model.template.points()
    return {"anchors": anchors, "s_max": float(model.heads.s_max_m), "normals": normals,
            "regions": model.template.region.reshape(-1)}


# -- 4. the fit ----------------------------------------------------------------------------------------------
class FitParams(torch.nn.Module):
    """The optimised parameters, with the position bound built in. With ``parents`` (each Gaussian's index among
    ``num_parents`` it was densified from), ``parent_moves`` [num_parents, 3] (metres) is added to every child's
    own position: one move for all the children of a parent."""

    def __init__(self, g: Gaussians, anchors: Tensor | None, s_max: float | None, parents: Tensor | None = None,
                 num_parents: int = 0) -> None:
        super().__init__()
        self.anchors, self.s_max, self.parents = anchors, s_max, parents
        self.parent_moves = (None if parents is None
                             else torch.nn.Parameter(torch.zeros(num_parents, 3, device=g.means.device)))
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
        own = self.pos if self.anchors is None else self.anchors + torch.tanh(self.pos) * self.s_max
        return own if self.parent_moves is None else own + self.parent_moves[self.parents]

    @torch.no_grad()
    def set_means(self, means: Tensor) -> None:
        """Move the Gaussians to ``means`` (clamped into the anchored range), their parents' moves kept."""
        if self.parent_moves is not None:
            means = means - self.parent_moves[self.parents]
        if self.anchors is None:
            self.pos.copy_(means)
        else:
            self.pos.copy_(torch.atanh(((means - self.anchors) / self.s_max).clamp(-0.995, 0.995)))

    def gaussians(self) -> Gaussians:
        rgb = torch.sigmoid(self.colour_logits)
        return Gaussians(self.means(), self.log_scales, self.quats, self.opacity_logits,
                         rgb_to_sh_dc(rgb).unsqueeze(-2))


def bounded_move(d: Tensor, normal: Tensor, normal_bound: float, tangent_bound: float) -> Tensor:
    """[N, 3] moves ``d`` with their part along the unit ``normal`` clamped to +-``normal_bound`` and their part
    across it shortened to at most ``tangent_bound`` (metres)."""
    along = (d * normal).sum(-1, keepdim=True)
    across = d - along * normal
    length = across.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return along.clamp(-normal_bound, normal_bound) * normal + across * (tangent_bound / length).clamp(max=1.0)


def view_loss(out_rgb: Tensor, out_alpha: Tensor, image: Tensor, mask: Tensor, cfg: FitConfig) -> Tensor:
    """(1 - w) L1 + w (1 - SSIM) on the colours plus ``alpha_weight`` |alpha - mask|; images [1, 3, S, S]."""
    l1 = (out_rgb - image).abs().mean()
    loss = (1 - cfg.ssim_weight) * l1
    if cfg.ssim_weight > 0:
        loss = loss + cfg.ssim_weight * (1 - ssim(out_rgb, image).mean())
    return loss + cfg.alpha_weight * (out_alpha - mask).abs().mean()


def photo_loss(out: RenderOutput, image: Tensor, mask: Tensor, cfg: FitConfig) -> Tensor:
    """:func:`view_loss` of a one-camera render against the photo ``image`` [1, 3, S, S] and its matte ``mask``
    [1, 1, S, S], the colours compared inside the matte only: outside it the alpha term alone makes Gaussians go.
    On white, turning a Gaussian white matches as well as fading it, and grazing ones, whose opacity is held,
    turned into white patches beside the neck seen from the side."""
    rgb = out.rgb.permute(0, 3, 1, 2)
    return view_loss(torch.where(mask > 0.5, rgb, image), out.alpha.permute(0, 3, 1, 2), image, mask, cfg)


def fit_to_photo(gaussians: Gaussians, image: Tensor, mask: Tensor, config: FitConfig | None = None,
                 anchors: Tensor | None = None, s_max: float | None = None, pose: Pose | None = None,
                 backend: str = "auto", progress: FitProgress | None = None, normals: Tensor | None = None,
                 regions: Tensor | None = None, outside: float | None = None,
                 landmarks: np.ndarray | None = None) -> FitResult:
    """Fit the predicted head ``gaussians`` (unbatched) to the photo.

    Args:
        image: [3, H, W] the photo matted on white, in [0, 1].
        mask: [1, H, W] its foreground alpha.
        anchors: [N_pred, 3] template points the prediction is anchored on, with ``s_max`` the position
            head's per-axis bound in metres: fitted positions stay within it, and the left-right map of the
            symmetry is the template's. None: positions are free, the map is the prediction's.
        pose: the input camera; None: :func:`perchead.inference.pose.estimate_pose`.
        normals: [N_pred, 3] the template's unit normals (None: the direction from the head's centre).
        regions: [N_pred] the template's region ids (None: one region).
        outside: the share of the photo's matte outside the head's silhouette that decides whether the free
            regions are freed (:attr:`FitConfig.free_min_outside`); None: measured on ``gaussians``.
        landmarks: the photo's :func:`photo_landmarks` at ``config.size`` when a caller already ran Face Mesh
            (None: found here).
        (:func:`template_inputs` gives anchors, s_max, normals and regions of a model.)
    Raises:
        FitDivergedError: a loss or parameter became NaN/infinite.
    """
    # Callers often run the network under inference_mode (the app, Reconstructor.predict): the fit needs
    # autograd, and ordinary copies of the prediction.
    with torch.inference_mode(False), torch.enable_grad():
        gaussians = Gaussians(*(t.clone() for t in gaussians.tensors().values()))
        return _fit(gaussians, image.clone(), mask.clone(), config or FitConfig(), anchors, s_max, pose,
                    backend, progress, normals, regions, outside, landmarks)


def turned_viewmats(viewmat: Tensor, yaws: tuple[float, ...]) -> Tensor:
    """[len(yaws), 4, 4] ``viewmat`` orbited about the head's vertical axis by each yaw (degrees)."""
    out = []
    for yaw in yaws:
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        rot = torch.eye(4, device=viewmat.device, dtype=viewmat.dtype)
        rot[0, 0], rot[0, 2], rot[2, 0], rot[2, 2] = c, s, -s, c
        out.append(viewmat @ rot)
    return torch.stack(out)


def matte_outside(alpha: Tensor, mask: Tensor) -> float:
    """Share of the photo's matte (``mask`` [S, S] > 0.5) outside a head's silhouette (``alpha`` [S, S] > 0.5)."""
    matte = mask > 0.5
    return float((matte & (alpha < 0.5)).sum() / matte.sum().clamp_min(1))


def head_iou(alpha: Tensor, free_share: Tensor, mask: Tensor) -> float:
    """IoU of the predicted silhouette (``alpha`` > 0.5) and the photo's ``mask`` over the rows where the
    prediction draws the head itself (not the free regions, ``free_share`` < 0.5 of its alpha): shoulders and
    clothes below the template's neck do not count, a matte that took the background beside the head does."""
    head = (alpha > 0.5) & (free_share < 0.5)
    rows = torch.nonzero(head.any(-1))
    if len(rows) == 0:
        return 0.0
    a, m = (alpha > 0.5)[rows.min():rows.max() + 1], (mask > 0.5)[rows.min():rows.max() + 1]
    union = int((a | m).sum())
    return int((a & m).sum()) / union if union else 0.0


def _fit(gaussians: Gaussians, image: Tensor, mask: Tensor, cfg: FitConfig, anchors: Tensor | None,
         s_max: float | None, pose: Pose | None, backend: str, progress: FitProgress | None,
         normals: Tensor | None, regions: Tensor | None, outside: float | None,
         landmarks: np.ndarray | None = None) -> FitResult:
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
    # Face Mesh runs once: the camera's alignment and the mirror's plane read the same midline landmarks, and
    # the face's width the same face oval.
    align = cfg.max_camera_shift > 0 and pose.method != "given"
    if landmarks is None and (cfg.max_face_narrowing > 0 or align or cfg.symmetry):
        landmarks = photo_landmarks(img[0], msk[0])
    pixels = None
    if (align or cfg.symmetry) and landmarks is not None:
        pixels = midline_pixels(img[0], msk[0], landmarks)
    if align and pixels is not None:
        pose, _ = align_midline(gaussians, pose, img[0], msk[0], cfg.max_camera_shift, backend, pixels=pixels)
    vm = pose.viewmat.to(device)
    K = camera_K(size).to(device)[None]
    height_scale = width_scale = face_width_scale = 1.0
    if cfg.max_height_change > 0 and regions is not None:
        gaussians, anchors, height_scale = fit_head_height(gaussians, anchors, regions.to(device), vm, K[0],
                                                           msk[0, 0], cfg.max_height_change,
                                                           cfg.min_silhouette_iou, backend)
    if cfg.max_width_change > 0 and regions is not None:
        gaussians, anchors, width_scale = fit_head_width(gaussians, anchors, regions.to(device), vm, K[0],
                                                         msk[0, 0], cfg.max_width_change, cfg.min_silhouette_iou,
                                                         backend)
    if cfg.max_face_narrowing > 0 and regions is not None:
        gaussians, anchors, face_width_scale = fit_face_width(gaussians, anchors, regions.to(device), vm, K[0],
                                                              msk[0, 0], landmarks, cfg.max_face_narrowing,
                                                              min_iou=cfg.min_silhouette_iou, backend=backend)

    shrink = cfg.child_shrink or child_shrink(size / min(image.shape[-2:]))
    dense, parents = densify(gaussians.detach(), cfg.num_gaussians or len(gaussians), shrink)
    colour, weight = photo_colours(dense, vm, img[0], msk[0], backend)
    # The normal each Gaussian may move along: its template point's (or, without one, away from the centre).
    if normals is not None:
        normal = normals.to(device)[parents]
    else:
        normal = torch.nn.functional.normalize(dense.means - dense.means.mean(0), dim=-1)
    centre = torch.linalg.inv(vm)[:3, 3]
    to_camera = torch.nn.functional.normalize(centre - dense.means, dim=-1)
    grazing = (normal * to_camera).sum(-1).abs() < cfg.grazing_cos
    free = torch.zeros_like(grazing)
    if regions is not None and cfg.free_regions:
        ids = torch.tensor([REGION_NAMES.index(r) for r in cfg.free_regions], device=device)
        free = torch.isin(regions.to(device)[parents], ids)
        free = free & ((normal * to_camera).sum(-1) > cfg.free_min_facing)

    with torch.no_grad():
        novel_vms = turned_viewmats(vm, cfg.novel_yaws)
        novel_K = camera_K(cfg.novel_size).to(device)[None]
        jitter_vms = (turned_viewmats(vm, (-cfg.jitter_deg, cfg.jitter_deg))
                      if cfg.jitter_weight > 0 and cfg.jitter_deg != 0 else None)
        if jitter_vms is not None:
            jitter_K = camera_K(cfg.jitter_size).to(device)[None]
            jitter_img = resize_to(image, cfg.jitter_size).to(device)[None]
            jitter_msk = resize_to(mask, cfg.jitter_size).to(device)[None]
        share, alpha = render_features(dense, free[:, None].float(), vm[None], K, size, size, backend=backend)
        iou = head_iou(alpha[0, ..., 0], share[0, ..., 0] / alpha[0, ..., 0].clamp_min(1e-6), msk[0, 0])
        if outside is None:
            outside = matte_outside(alpha[0, ..., 0], msk[0, 0])
    if outside < cfg.free_min_outside:
        free = torch.zeros_like(free)  # nothing beyond the head for them to reach: fitted as the head is
    warnings: list[str] = []
    geometry = iou >= cfg.min_silhouette_iou
    if not geometry:
        warnings.append(f"the photo's matte and the predicted head seen from the estimated camera (yaw "
                        f"{pose.yaw_deg:+.0f}, pitch {pose.pitch_deg:+.0f}, {pose.method}) overlap little "
                        f"(silhouette IoU {iou:.2f} < {cfg.min_silhouette_iou}): the matte or the camera is not "
                        "trusted, so only colours were fitted, and the far side was not mirrored")

    mirror, midline = None, None
    # Through a head that does not sit where the photo's does (the reason it is not trusted), the mirror
    # would paint the photo's face a second time beside the first (seen on a held-out photo).
    if cfg.symmetry and geometry:
        # Mirrored through the photo's own face midline, where it lands on the head: through the head's, a
        # turned face whose nose landed 30 mm to the side was painted twice.
        midline = None if pixels is None else photo_midline(dense, vm, img[0], msk[0], backend, pixels)
        if midline is not None and abs(midline) > cfg.max_midline_offset:
            warnings.append(f"the photo's face midline lands {midline * 1000:+.0f} mm from the head's (more than "
                            f"{cfg.max_midline_offset * 1000:.0f} mm): the far side of the face was not mirrored")
        else:
            plane = midline or 0.0
            points = gaussians.means.detach() if anchors is None else anchors.to(device)
            offsets = dense.means - gaussians.means.detach()[parents]
            mirror = (mirror_index(points, parents, offsets, plane) if len(dense) > len(gaussians)
                      else mirror_index(points, plane_x=plane))
    dense, seen = project_appearance(dense, colour, weight, cfg.prior_visibility,
                                     None if regions is None else regions.to(device)[parents], mirror,
                                     [REGION_NAMES.index(r) for r in cfg.repaint_regions])

    tied = cfg.parent_motion and geometry and anchors is not None and normals is not None
    parent_normal = normals.to(device) if tied else None
    params = FitParams(dense, None if anchors is None else anchors.to(device)[parents], s_max,
                       parents if tied else None, len(gaussians))
    prior = Prior.of(params, dense, s_max)
    trust = seen.detach().sqrt()  # partly seen silhouette Gaussians still need to move to match the outline
    unseen = 1.0 - trust
    start_means = params.means().detach().clone()
    start_opacity = dense.opacity_logits.detach().clone()
    hold = grazing if geometry else torch.ones_like(grazing)
    with torch.no_grad():
        # The novel views' target covers the head only: the free regions reach for shoulders the template
        # does not have, and the network's renders of them from the side say nothing about those.
        feats, novel_alpha = render_features(dense, torch.cat([dense.rgb, free[:, None].float()], -1), novel_vms,
                                             novel_K.expand(len(novel_vms), 3, 3), cfg.novel_size, cfg.novel_size,
                                             backend=backend)
        novel_rgb = (feats[..., :3] + (1 - novel_alpha)).permute(0, 3, 1, 2)  # on white, as rasterize
        novel_alpha = novel_alpha.permute(0, 3, 1, 2)
        novel_w = (1 - feats[..., 3:] / novel_alpha.permute(0, 2, 3, 1).clamp_min(1e-6)).clamp(0, 1)
        novel_w = novel_w.permute(0, 3, 1, 2)
    growth = torch.where(free, math.log(cfg.free_scale_growth), math.log(cfg.max_scale_growth))
    max_scales = dense.log_scales.detach() + growth[:, None]
    hold = hold & ~free if geometry else hold
    if geometry:
        # what the free regions reach for (shoulders, clothes) is no part of the network's head: nothing to
        # hold them to, and they step as fully as what the camera sees best
        trust = torch.where(free, torch.ones_like(trust), trust)
        unseen = torch.where(free, torch.zeros_like(unseen), unseen)

    def after_step() -> None:
        if geometry:
            if tied:
                params.parent_moves.copy_(bounded_move(params.parent_moves, parent_normal, cfg.normal_bound,
                                                       cfg.tangent_bound))
                bounded = start_means + params.parent_moves[parents]
            else:
                bounded = start_means + bounded_move(params.means() - start_means, normal, cfg.normal_bound,
                                                     cfg.tangent_bound)
            params.set_means(torch.where(free[:, None], params.means(), bounded))
            params.log_scales.copy_(torch.minimum(params.log_scales, max_scales))
        else:
            params.set_means(start_means)
            params.log_scales.copy_(dense.log_scales)
        params.opacity_logits.copy_(torch.where(hold, start_opacity, params.opacity_logits))

    step = [0]

    def total_loss() -> tuple[Tensor, Tensor]:
        g = params.gaussians()
        out = rasterize(g, vm[None], K, size, size, backend=backend, check_finite=False)
        l1_input = (out.rgb.permute(0, 3, 1, 2) - img).abs().mean()
        loss = photo_loss(out, img, msk, cfg)
        if jitter_vms is not None:
            j = rasterize(g, jitter_vms[step[0] % 2:step[0] % 2 + 1], jitter_K, cfg.jitter_size, cfg.jitter_size,
                          backend=backend, check_finite=False)
            loss = loss + cfg.jitter_weight * photo_loss(j, jitter_img, jitter_msk, cfg)
        if cfg.novel_weight > 0:
            i = step[0] % len(cfg.novel_yaws)
            nov = rasterize(g, novel_vms[i:i + 1], novel_K, cfg.novel_size, cfg.novel_size, backend=backend,
                            check_finite=False)
            w = novel_w[i:i + 1]
            loss = loss + cfg.novel_weight * (
                (w * (nov.rgb.permute(0, 3, 1, 2) - novel_rgb[i:i + 1]).abs()).mean()
                + (w * (nov.alpha.permute(0, 3, 1, 2) - novel_alpha[i:i + 1]).abs()).mean())
        step[0] += 1
        return loss + cfg.prior_weight * prior.loss(g, unseen), l1_input

    position_trust = parent_trust = None
    if tied:
        # a parent moves as surely as its children, on average, are seen; the free regions' children move on
        # their own (and their parents not at all)
        position_trust = torch.where(free, trust, torch.zeros_like(trust))
        parent_trust = torch.zeros(len(gaussians), device=device).index_add_(0, parents, trust - position_trust)
        parent_trust = parent_trust / torch.bincount(parents, minlength=len(gaussians)).clamp_min(1)
    fitted, losses, l1s = optimise(params, trust, total_loss, cfg, anchors is not None, progress, after_step,
                                   position_trust, parent_trust)
    return FitResult(fitted, pose, cfg.steps, losses, l1s, time.perf_counter() - start,
                     float((seen > 0.5).float().mean()), iou, geometry, warnings, midline, outside, bool(free.any()),
                     height_scale, width_scale=width_scale, face_width_scale=face_width_scale,
                     child_shrink=shrink)


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


class TrustAdam:
    """Adam (torch.optim.Adam's update: betas 0.9/0.999, no weight decay) on [N, ...] parameters, each row's step
    scaled by its trust in [0, 1]. Adam's steps do not shrink with the gradient, so a Gaussian behind the face
    that a nearly transparent front lets through a 1e-6 gradient would move as fast as a visible one: each
    Gaussian steps in proportion to how well the input camera sees it (or its mirror image). Written out
    rather than torch.optim.Adam because torch.optim's first use imports torch._dynamo, about 1 s of a 20 s
    ``perchead reconstruct`` on two cores."""

    def __init__(self, groups: list[tuple[Tensor, float, Tensor]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-15) -> None:
        self.groups = groups
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p, _, _ in groups]
        self.v = [torch.zeros_like(p) for p, _, _ in groups]

    def zero_grad(self) -> None:
        for p, _, _ in self.groups:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for (p, lr, trust), m, v in zip(self.groups, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            step = m / (v.sqrt() / c2 + self.eps) * (lr / c1)
            p.sub_(trust.view(-1, *[1] * (p.ndim - 1)) * step)


def optimise(params: FitParams, trust: Tensor, total_loss: Callable[[], tuple[Tensor, Tensor]], cfg: FitConfig,
             anchored: bool, progress: FitProgress | None,
             after_step: Callable[[], None] | None = None,
             position_trust: Tensor | None = None, parent_trust: Tensor | None = None,
             ) -> tuple[Gaussians, list[float], tuple[float, float]]:
    """``cfg.steps`` Adam steps on ``total_loss() -> (loss, a monitored L1)``, each Gaussian's step scaled by
    its ``trust`` in [0, 1] (its position's by ``position_trust`` when given; the parents' moves of
    :class:`FitParams`, when it has them, by ``parent_trust``), then ``after_step()`` (a
    projection of the parameters, under no_grad). Returns the fitted Gaussians, the loss before every step
    and after the last, and the monitored L1 before and after. Raises :class:`FitDivergedError` on a
    NaN/infinite loss or parameter."""
    lr = cfg.lr
    pos_trust = trust if position_trust is None else position_trust
    groups = [
        (params.pos, lr * cfg.lr_position * (1.0 if anchored else 0.01), pos_trust),
        (params.log_scales, lr * cfg.lr_scale, trust),
        (params.quats, lr * cfg.lr_rotation, trust),
        (params.opacity_logits, lr * cfg.lr_opacity, trust),
        (params.colour_logits, lr * cfg.lr_colour, trust),
    ]
    if params.parent_moves is not None:  # metres: the anchored position's step at its centre
        groups.append((params.parent_moves, lr * cfg.lr_position * (params.s_max or 0.01),
                       torch.ones_like(params.parent_moves[:, 0]) if parent_trust is None else parent_trust))
    opt = TrustAdam(groups)
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
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            opt.step()
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


__all__ = ["HEIGHT_TOLERANCE_PX", "WIDTH_TOLERANCE_PX", "FitConfig", "FitDivergedError", "FitParams", "FitProgress",
           "FitResult", "Prior", "TrustAdam", "align_midline", "bounded_move", "child_grid", "child_shrink",
           "densify", "fit_face_width", "fit_head_height", "fit_head_width", "fit_to_photo", "head_iou",
           "matte_outside", "midline_pixels", "mirror_index", "optimise", "paint", "photo_colours", "photo_landmarks",
           "photo_loss", "photo_midline", "project_appearance", "shading_kept", "template_inputs", "turned_viewmats",
           "view_loss"]

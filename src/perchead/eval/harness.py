"""The evaluation loop shared by ``perchead eval`` and ``perchead eval-heldout``.

For every multi-view ("studio") subject of a split, the view pairs of the three tasks of
:mod:`perchead.eval.protocol` (novel, extreme, opposite_profile) are built from the subject's cameras; each
pair's input view goes through every :class:`Method` (a checkpoint, the mean-colour template baseline),
which renders the pair's target cameras, and a :class:`~perchead.eval.metrics.MetricSuite` scores every
render against its target (composited on white, as in the paper). One row per (subject, pair, target,
method), with the pair's setting and its table group (novel, extreme, extreme_back, opposite_profile). The
extreme pairs share the novel pair's input, so their targets are also novel targets: each is rendered and
scored again under its own group (the same numbers, up to float rounding).

Framing: every view (the input and the targets) is first cut to the protocol's crop
(:func:`perchead.eval.protocol.target_crop`; ``panohead`` by default: the head centred, at the scale the
standard input camera frames it), padded with white where the crop reaches past the captured image, and its
intrinsics moved with the crop; then inputs are resized to each model's input size and targets to the
compared size exactly as in training (:func:`perchead.train.data.collate`). The crop box is rounded to whole
pixels, so cropping never resamples (the intrinsics follow the rounded box exactly); views whose crop is the
whole image -- every view of ``perchead synth`` data, taken with the standard camera -- are used as they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perchead.data.format import HeadDataset, SubjectRecord, load_view, read_dataset
from perchead.geometry import Gaussians
from perchead.inference.fit import FitConfig, FitResult
from perchead.inference.tune import fit_network
from perchead.model import HeadTemplate, PercHead
from perchead.model.lifting import batch_input_camera
from perchead.render import rasterize

from .metrics import MetricSuite
from .protocol import GROUPS, TASKS, ProtocolConfig, ViewPair, target_crop, task_group, view_pairs, views_from_cameras

SETTINGS: tuple[str, ...] = TASKS  # the tasks evaluated, in order; their pairs fall into GROUPS
BASELINE = "template_mean_colour"
SHARPENED_SUFFIX = "_sharpened"
FITTED_SUFFIX = "_fitted"


@dataclass
class EvalConfig:
    """Which subjects are evaluated and how (written next to every result)."""

    split: str = "test"
    """dataset split holding the held-out subjects"""
    size: int | None = None
    """side of the compared images in pixels; None = the (first) model's input size"""
    baseline_opacity: float = 0.9
    """opacity of every Gaussian of the mean-colour template baseline"""
    baseline_scale: float = 0.5
    """baseline Gaussian standard deviation as a fraction of the template's point spacing"""
    max_subjects: int | None = None
    """evaluate only the first N multi-view subjects of the split (None: all)"""
    subjects: tuple[str, ...] = ()
    """evaluate only these subject ids (e.g. nersemble_059 ...); empty: every multi-view subject of the split"""
    backend: str = "auto"
    """rasterizer backend (auto / cpu / gsplat / reference)"""
    fit_steps: int = 0
    """> 0: also every checkpoint fitted to the input view as `perchead reconstruct` fits it (its FitConfig
    with this many steps, the input camera estimated from the input image): methods NAME_fitted"""
    fit_size: int | None = None
    """side (pixels) of the fitted input view (None: FitConfig's default, what `perchead reconstruct` uses)"""
    fit_tune_steps: int | None = None
    """steps tuning the network itself on the input view before the fit (perchead.inference.tune; None:
    FitConfig's default, what `perchead reconstruct` uses)"""
    reads_input: bool = False
    """also measure whether each checkpoint reads its input (perchead.eval.reads_input: hair and skin colour at
    the back and the profiles against the truth, PSNR per target-yaw bucket): reads_input.md/.json/.png"""
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.baseline_opacity < 1.0:
            raise ValueError(f"baseline_opacity must be in (0, 1), got {self.baseline_opacity}")
        if self.baseline_scale <= 0:
            raise ValueError(f"baseline_scale must be > 0, got {self.baseline_scale}")
        if self.size is not None and self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if self.max_subjects is not None and self.max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1, got {self.max_subjects}")
        if self.fit_steps < 0:
            raise ValueError(f"fit_steps must be >= 0, got {self.fit_steps}")
        if self.fit_size is not None and self.fit_size < 16:
            raise ValueError(f"fit_size must be at least 16 pixels, got {self.fit_size}")
        if self.fit_tune_steps is not None and self.fit_tune_steps < 0:
            raise ValueError(f"fit_tune_steps must be >= 0, got {self.fit_tune_steps}")
        self.subjects = tuple(self.subjects)


# -- methods -----------------------------------------------------------------------------------------------
class Method:
    """Input view -> renders at the target cameras, under one or more names (``names``)."""

    names: tuple[str, ...] = ()
    image_size: int = 0
    description: str = ""

    def render(self, image: Tensor, mask: Tensor, viewmats: Tensor, Ks: Tensor, size: int, backend: str,
               input_camera: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """image [B,3,S,S], mask [B,1,S,S], target cameras [B,C,4,4] / [B,C,3,3] (intrinsics for ``size`` px),
        the input view's camera ([B,4,4], [B,3,3] for ``size`` px; None: unknown)
        -> {name: [B, C, 3, size, size] in [0, 1]}."""
        raise NotImplementedError


def render_views(g: Gaussians, viewmats: Tensor, Ks: Tensor, size: int, backend: str) -> Tensor:
    """[B, C, 3, size, size] renders (not clamped) of B heads at their C target cameras."""
    rgb = rasterize(g.to(torch.float32), viewmats, Ks, size, size, backend=backend).rgb
    return rgb.permute(0, 1, 4, 2, 3)


def sharpen_views(model: PercHead, raw: Tensor) -> Tensor:
    """:func:`render_views` output through the model's SHP-CNN (per image)."""
    b, c = raw.shape[:2]
    return model.sharpen(raw.flatten(0, 1)).unflatten(0, (b, c))


def shp_is_identity(model: PercHead) -> bool:
    """True when the model has no SHP-CNN or an untrained one (its zero-initialised last layer still zero)."""
    if model.shp_cnn is None:
        return True
    tail = model.shp_cnn.tail
    return bool((tail.weight == 0).all() and (tail.bias == 0).all())


class ModelMethod(Method):
    """A checkpoint: ``name`` = the rasterized Gaussians, ``name_sharpened`` = the same through SHP-CNN."""

    def __init__(self, name: str, model: PercHead, sharpened: bool = True, source: str = "") -> None:
        self.model = model.eval()
        self.sharpened = sharpened  # without an SHP-CNN, sharpen() is the identity
        self.names = (name, name + SHARPENED_SUFFIX) if self.sharpened else (name,)
        self.image_size = model.config.image_size
        shp = "" if model.shp_cnn is None else (" (SHP-CNN untrained: the identity)" if shp_is_identity(model)
                                                else "")
        self.description = (f"checkpoint {source or '<in-memory>'}: preset '{model.config.preset}', "
                            f"{model.config.decoder} decoder{shp}")

    @torch.no_grad()
    def render(self, image, mask, viewmats, Ks, size, backend, input_camera=None):
        # The template decoder infers the pose itself; the lifting decoder is given the input camera (or, when
        # unknown, assumes the standard input camera).
        camera = None
        if input_camera is not None:
            camera = batch_input_camera(self.model.config, input_camera[0][:, None], input_camera[1][:, None], size)
        g = self.model(image, mask, camera=camera)
        raw = render_views(g, viewmats, Ks, size, backend)
        out = {self.names[0]: raw.clamp(0, 1)}
        if self.sharpened:
            out[self.names[1]] = sharpen_views(self.model, raw).clamp(0, 1)
        return out


class FittedMethod(Method):
    """A checkpoint's prediction tuned and fitted to the input view (:func:`perchead.inference.tune.fit_network`, what
    ``perchead reconstruct`` writes): the input camera estimated from the input image, no SHP-CNN."""

    def __init__(self, name: str, model: PercHead, fit: FitConfig, source: str = "") -> None:
        self.model, self.fit = model.eval(), fit
        self.names = (name + FITTED_SUFFIX,)
        self.image_size = model.config.image_size
        tuned = f"the network tuned for {fit.tune_steps} steps, then " if fit.tune_steps else ""
        self.description = (f"checkpoint {source or '<in-memory>'} fitted to the input view: {tuned}{fit.steps} "
                            f"steps, {fit.num_gaussians} Gaussians, {fit.size} px (perchead reconstruct's fit)")

    def render(self, image, mask, viewmats, Ks, size, backend, input_camera=None):
        with torch.no_grad():
            g = self.model(image, mask)
        out = []
        for b in range(image.shape[0]):
            camera = None if input_camera is None else input_camera[0][b]
            fitted = self.fit_input(g[b], image[b], mask[b], camera, backend).gaussians
            with torch.no_grad():
                rgb = rasterize(fitted, viewmats[b], Ks[b], size, size, backend=backend).rgb
            out.append(rgb.permute(0, 3, 1, 2))
        return {self.names[0]: torch.stack(out).clamp(0, 1)}

    def fit_input(self, gaussians: Gaussians, image: Tensor, mask: Tensor, input_viewmat: Tensor | None,
                  backend: str) -> FitResult:
        """One input's fit (the network tuned, then its Gaussians fitted: :func:`perchead.inference.tune.fit_network`);
        the camera is estimated from the image, as for a photo (``input_viewmat``, the input view's own camera,
        is for subclasses that study the fit)."""
        return fit_network(self.model, image[None], mask[None], image, mask, self.fit, gaussians=gaussians,
                           backend=backend)


def mean_foreground_colour(image: Tensor, mask: Tensor) -> Tensor:
    """[B, 3] mask-weighted mean RGB of ``image`` [B, 3, H, W] under ``mask`` [B, 1, H, W]."""
    weights = mask.clamp(0, 1)
    total = weights.sum(dim=(-2, -1))
    if bool((total <= 0).any()):
        raise ValueError("an input mask is empty: the mean foreground colour is undefined")
    return (image * weights).sum(dim=(-2, -1)) / total


def mean_colour_gaussians(template: HeadTemplate, image: Tensor, mask: Tensor, opacity: float = 0.9,
                          scale: float = 0.5) -> Gaussians:
    """The baseline Gaussians [B, N]: the template points, isotropic standard deviation ``scale`` x point
    spacing, identity rotation, opacity ``opacity``, colour = the input's mean foreground colour."""
    anchors, _ = template.points()
    b, n = image.shape[0], anchors.shape[0]
    sigma = scale * template.point_spacing()
    if not sigma > 0:
        raise ValueError("the template has no point spacing (all points coincide?)")
    means = anchors[None].expand(b, n, 3)
    scales = torch.full((b, n, 3), sigma, dtype=anchors.dtype, device=anchors.device)
    quats = torch.zeros(b, n, 4, dtype=anchors.dtype, device=anchors.device)
    quats[..., 0] = 1.0
    opacities = torch.full((b, n), opacity, dtype=anchors.dtype, device=anchors.device)
    rgb = mean_foreground_colour(image, mask)[:, None, :].expand(b, n, 3)
    return Gaussians.from_activated(means, scales, quats, opacities, rgb)


class MeanColourTemplate(Method):
    """The baseline without a network: a head-shaped blob in the input's mean colour."""

    def __init__(self, template: HeadTemplate, image_size: int, opacity: float = 0.9, scale: float = 0.5) -> None:
        self.template, self.image_size, self.opacity, self.scale = template, image_size, opacity, scale
        self.names = (BASELINE,)
        self.description = (f"Gaussians at the {template.num_points} template points, isotropic std {scale} x "
                            f"point spacing ({template.point_spacing():.5f} m), identity rotation, opacity "
                            f"{opacity}, colour = mask-weighted mean RGB of the input image")

    @torch.no_grad()
    def render(self, image, mask, viewmats, Ks, size, backend, input_camera=None):
        g = mean_colour_gaussians(self.template, image, mask, self.opacity, self.scale)
        return {BASELINE: render_views(g, viewmats, Ks, size, backend).clamp(0, 1)}


# -- data ----------------------------------------------------------------------------------------------------
def crop_view(image: Tensor, mask: Tensor, K: Tensor, world_to_cam: Tensor,
              protocol: ProtocolConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Cut one view [3,H,W] (on white) / mask [1,H,W] to the protocol's square crop, rounded to whole pixels,
    padding with white (mask 0) outside the image; returns the crop and its intrinsics."""
    h, w = image.shape[-2:]
    box = target_crop(K, world_to_cam, w, h, max(h, w), protocol).box
    x0, y0 = round(box[0]), round(box[1])
    side = max(1, round(box[2] - box[0]))
    if (x0, y0, side) == (0, 0, w) and w == h:
        return image, mask, K
    out = torch.ones(3, side, side, dtype=image.dtype)
    out_mask = torch.zeros(1, side, side, dtype=mask.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
        out_mask[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = mask[:, sy0:sy1, sx0:sx1]
    K = K.clone()
    K[0, 2] -= x0
    K[1, 2] -= y0
    return out, out_mask, K


def load_sample(subject: SubjectRecord, indices: Sequence[int], protocol: ProtocolConfig,
                cache: dict[int, tuple[Tensor, Tensor, Tensor]]) -> dict:
    """A sampler-style sample (view 0 = input) of the given views, composited over white and cropped."""
    for i in indices:
        if i not in cache:
            v = subject.views[i]
            lv = load_view(v)
            cache[i] = crop_view(lv.image * lv.mask + (1.0 - lv.mask), lv.mask, v.K, v.world_to_cam, protocol)
    views = [subject.views[i] for i in indices]
    return {"images": torch.stack([cache[i][0] for i in indices]),
            "masks": torch.stack([cache[i][1] for i in indices]),
            "viewmats": torch.stack([v.world_to_cam for v in views]),
            "Ks": torch.stack([cache[i][2] for i in indices]), "subject": subject.id}


def eval_subjects(dataset: HeadDataset, config: EvalConfig) -> list[SubjectRecord]:
    """The multi-view subjects of the configured split (or the listed ones), in dataset order."""
    split = dataset.split(config.split)
    subjects = [s for s in split if s.kind == "studio" and len(s.views) >= 2]
    if config.subjects:
        known = {s.id for s in subjects}
        missing = [s for s in config.subjects if s not in known]
        if missing:
            raise ValueError(f"subject(s) {missing} are not multi-view subjects of split '{config.split}' of "
                             f"{dataset.root}")
        subjects = [s for s in subjects if s.id in set(config.subjects)]
    if not subjects:
        raise ValueError(f"dataset {dataset.root} has no multi-view (studio) subject in split '{config.split}': "
                         "held-out novel/extreme views need several cameras per subject")
    return subjects[: config.max_subjects] if config.max_subjects is not None else subjects


def group_of(setting: str) -> str:
    """The table group of a pair setting (:func:`perchead.eval.protocol.task_group`)."""
    return task_group(setting)


@dataclass
class Case:
    """One evaluated pair, handed to ``on_case`` (figures): renders and targets [C, 3, R, R]."""

    index: int
    subject: str
    pair: ViewPair
    input: Tensor  # [3, R, R] the input view resized to the compared size
    targets: Tensor
    renders: dict[str, Tensor]


@dataclass
class EvalRun:
    subjects: list[str]
    without_pairs: dict[str, list[str]]
    size: int
    data: Path
    seconds: float


def evaluate(methods: Sequence[Method], data: str | Path | HeadDataset, config: EvalConfig,
             suite: MetricSuite | None, progress: bool = False,
             on_case: Callable[[Case], None] | None = None, label: str = "eval") -> EvalRun:
    """Run every method on every pair of every selected subject; rows go into ``suite`` (None: no scoring,
    e.g. a second pass for figures)."""
    if not methods:
        raise ValueError("nothing to evaluate: no method given")
    names = [n for m in methods for n in m.names]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    from perchead.train.data import collate

    t_start = time.perf_counter()
    dataset = data if isinstance(data, HeadDataset) else read_dataset(data)
    subjects = eval_subjects(dataset, config)
    size = config.size or methods[0].image_size
    without: dict[str, list[str]] = {g: [] for g in GROUPS}
    for n, subject in enumerate(subjects):
        index = {v.name: i for i, v in enumerate(subject.views)}
        views = views_from_cameras(list(index), torch.stack([v.world_to_cam for v in subject.views]))
        cache: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        pairs = [p for task in SETTINGS for p in view_pairs(views, task, config.protocol)]  # type: ignore[arg-type]
        # A subject can have some groups and not others (a frontal input but no back view at eye level).
        for group in GROUPS:
            if not any(group_of(p.setting) == group for p in pairs):
                without[group].append(subject.id)
        for pair in pairs:
            sample = load_sample(subject, [index[pair.input.name]] + [index[t.name] for t in pair.targets],
                                 config.protocol, cache)
            renders: dict[str, Tensor] = {}
            batches: dict[int, Any] = {}
            for method in methods:
                if method.image_size not in batches:
                    batches[method.image_size] = collate([sample], method.image_size, size)
                b = batches[method.image_size]
                out = method.render(b.input_image, b.input_mask, b.viewmats[:, 1:], b.Ks[:, 1:], size,
                                    config.backend, (b.viewmats[:, 0], b.Ks[:, 0]))
                renders.update({k: v[0] for k, v in out.items()})
            targets = next(iter(batches.values())).targets[0, 1:]  # view 0 of the batch is the input
            if suite is not None:
                for name, pred in renders.items():
                    suite.update(pred, targets, info=[_row(subject.id, pair, t, name) for t in pair.targets])
            if on_case is not None:
                first = next(iter(batches.values()))
                inp = torch.nn.functional.interpolate(first.input_image, size=(size, size), mode="bilinear",
                                                      antialias=True, align_corners=False)[0]
                on_case(Case(n, subject.id, pair, inp, targets, renders))
        if progress:
            print(f"{label}: {n + 1}/{len(subjects)} subjects ({time.perf_counter() - t_start:.0f} s)", flush=True)
    return EvalRun([s.id for s in subjects], without, size, Path(dataset.root), time.perf_counter() - t_start)


def _row(subject: str, pair: ViewPair, target, method: str) -> dict[str, Any]:
    return {"subject": subject, "setting": pair.setting, "group": group_of(pair.setting),
            "input": pair.input.name, "input_yaw_deg": round(pair.input.yaw_deg, 2),
            "input_pitch_deg": round(pair.input.pitch_deg, 2), "target": target.name,
            "target_yaw_deg": round(target.yaw_deg, 2), "target_pitch_deg": round(target.pitch_deg, 2),
            "method": method}


def iter_groups(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    """The groups (novel, extreme, extreme_back, opposite_profile), then every opposite-profile direction
    present in ``rows`` (its pair settings)."""
    yield from GROUPS
    yield from sorted({r["setting"] for r in rows if r["group"] == "opposite_profile"})


def finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


__all__ = ["BASELINE", "GROUPS", "SETTINGS", "SHARPENED_SUFFIX", "Case", "EvalConfig", "EvalRun", "MeanColourTemplate",
           "Method", "ModelMethod", "crop_view", "eval_subjects", "evaluate", "finite_mean", "group_of",
           "iter_groups", "load_sample", "mean_colour_gaussians", "mean_foreground_colour", "shp_is_identity"]

"""Held-out evaluation of a checkpoint on the test subjects of a dataset in perchead's format.

For every multi-view ("studio") subject of the split, the novel and extreme view pairs of
:mod:`perchead.eval.protocol` are reconstructed from their input view and rendered at the target cameras by
three methods, then scored with the project's PSNR and SSIM (unmasked, on white, as in the paper):

* ``template_mean_colour`` -- the baseline: no network at all. One Gaussian at each of the model's own
  template points (``model.template.points()``), isotropic, standard deviation ``baseline_scale`` x the
  template's point spacing (``HeadTemplate.point_spacing()``; 0.5 = half the spacing, the same size the
  network's scale head starts from with the default ``scale_init``), identity rotation, opacity
  ``baseline_opacity`` (0.9), and every Gaussian the *mean foreground colour of the input image*
  (the mask-weighted mean of its RGB). It shows how far "a head-shaped blob in the right colour" goes.
* ``model`` -- the network's Gaussians, rasterized (no SHP-CNN): what the reconstruct stage trains.
* ``model_sharpened`` -- the same render passed through SHP-CNN (``PercHead.sharpen``), the final output.

Images are compared at ``size`` pixels (default: the model's input size), with the same resizing and
intrinsics scaling as training (:func:`perchead.train.data.collate`). Synthetic views are taken with the
project's standard head camera, whose "panohead" crop is its whole image (docs/evaluation.md), so the
full target images are used. Predictions are clamped to [0, 1] before scoring (SHP-CNN's output is not
clamped). Means are over target images; every pair of every subject counts once per target.

    perchead eval-heldout --checkpoint src/perchead/assets/demo --data outputs/demo/data --out heldout.json
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro
from torch import Tensor

from perchead.data.format import SubjectRecord, load_view, read_dataset
from perchead.geometry import Gaussians
from perchead.model import PercHead
from perchead.render import rasterize

from .metrics import psnr, ssim
from .protocol import ProtocolConfig, describe_protocol, view_pairs, views_from_cameras

METHODS: tuple[str, ...] = ("template_mean_colour", "model", "model_sharpened")
SETTINGS: tuple[str, ...] = ("novel", "extreme")
BASELINE = "template_mean_colour"


@dataclass
class HeldoutConfig:
    """What is evaluated and how (written into the result JSON)."""

    split: str = "test"
    """dataset split holding the held-out subjects"""
    size: int | None = None
    """side of the compared images in pixels; None = the model's input size"""
    baseline_opacity: float = 0.9
    """opacity of every Gaussian of the mean-colour template baseline"""
    baseline_scale: float = 0.5
    """baseline Gaussian standard deviation as a fraction of the template's point spacing"""
    max_subjects: int | None = None
    """evaluate only the first N studio subjects of the split (None: all)"""
    backend: str = "auto"
    """rasterizer backend (auto / cpu / gsplat / reference)"""
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.baseline_opacity < 1.0:
            raise ValueError(f"baseline_opacity must be in (0, 1), got {self.baseline_opacity}")
        if self.baseline_scale <= 0:
            raise ValueError(f"baseline_scale must be > 0, got {self.baseline_scale}")
        if self.size is not None and self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")


@dataclass
class HeldoutResult:
    rows: list[dict[str, Any]]
    """one per (subject, pair, target, method): subject, setting, group, input, target, method, psnr, ssim"""
    summary: list[dict[str, Any]]
    """one per (group, method): group (novel / extreme / each extreme direction), images, subjects, psnr, ssim"""
    checks: dict[str, Any]
    info: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "checks": self.checks, "info": self.info, "rows": self.rows}


# -- the baseline -------------------------------------------------------------------------------------------
def mean_foreground_colour(image: Tensor, mask: Tensor) -> Tensor:
    """[B, 3] mask-weighted mean RGB of ``image`` [B, 3, H, W] under ``mask`` [B, 1, H, W]."""
    weights = mask.clamp(0, 1)
    total = weights.sum(dim=(-2, -1))
    if bool((total <= 0).any()):
        raise ValueError("an input mask is empty: the mean foreground colour is undefined")
    return (image * weights).sum(dim=(-2, -1)) / total


def mean_colour_template(model: PercHead, image: Tensor, mask: Tensor, opacity: float = 0.9,
                         scale: float = 0.5) -> Gaussians:
    """The baseline Gaussians [B, N]: the model's template points, isotropic standard deviation
    ``scale`` x point spacing, identity rotation, opacity ``opacity``, colour = the input's mean foreground
    colour."""
    anchors, _ = model.template.points()
    b, n = image.shape[0], anchors.shape[0]
    sigma = scale * model.template.point_spacing()
    if not sigma > 0:
        raise ValueError("the model's template has no point spacing (all points coincide?)")
    means = anchors[None].expand(b, n, 3)
    scales = torch.full((b, n, 3), sigma, dtype=anchors.dtype, device=anchors.device)
    quats = torch.zeros(b, n, 4, dtype=anchors.dtype, device=anchors.device)
    quats[..., 0] = 1.0
    opacities = torch.full((b, n), opacity, dtype=anchors.dtype, device=anchors.device)
    rgb = mean_foreground_colour(image, mask)[:, None, :].expand(b, n, 3)
    return Gaussians.from_activated(means, scales, quats, opacities, rgb)


# -- evaluation ---------------------------------------------------------------------------------------------
def _sample(subject: SubjectRecord, indices: Sequence[int], cache: dict[int, tuple[Tensor, Tensor]]) -> dict:
    """A sampler-style sample (view 0 = input), composited over white like HeadViewsDataset's."""
    images, masks = [], []
    for i in indices:
        if i not in cache:
            lv = load_view(subject.views[i])
            cache[i] = (lv.image * lv.mask + (1.0 - lv.mask), lv.mask)
        images.append(cache[i][0])
        masks.append(cache[i][1])
    views = [subject.views[i] for i in indices]
    return {"images": torch.stack(images), "masks": torch.stack(masks),
            "viewmats": torch.stack([v.world_to_cam for v in views]), "Ks": torch.stack([v.K for v in views]),
            "subject": subject.id}


@torch.no_grad()
def predict(model: PercHead, image: Tensor, mask: Tensor, viewmats: Tensor, Ks: Tensor, size: int,
            config: HeldoutConfig) -> dict[str, Tensor]:
    """Renders [B, C, 3, size, size] in [0, 1] of every method for inputs [B, ...] and cameras [B, C, ...]."""
    def render(g: Gaussians) -> Tensor:
        rgb = rasterize(g.to(torch.float32), viewmats, Ks, size, size, backend=config.backend).rgb
        return rgb.permute(0, 1, 4, 2, 3)  # [B, C, 3, R, R]

    baseline = render(mean_colour_template(model, image, mask, config.baseline_opacity, config.baseline_scale))
    raw = render(model(image, mask))
    b, c = raw.shape[:2]
    sharp = model.sharpen(raw.flatten(0, 1)).unflatten(0, (b, c))
    return {"template_mean_colour": baseline.clamp(0, 1), "model": raw.clamp(0, 1),
            "model_sharpened": sharp.clamp(0, 1)}


def _group(setting: str) -> str:
    return "novel" if setting == "novel" else "extreme"


def evaluate_heldout(checkpoint: str | Path | PercHead, data: str | Path, config: HeldoutConfig | None = None,
                     progress: bool = False, figure: str | Path | None = None) -> HeldoutResult:
    """Score the model and the mean-colour template on the held-out subjects (see the module docstring).

    ``figure``: also save a PNG grid with one row per (subject, setting) of the first subjects: input,
    target, baseline, model, sharpened (for the first target of each pair).
    """
    from perchead.train.data import collate

    cfg = config or HeldoutConfig()
    t_start = time.perf_counter()
    model = checkpoint if isinstance(checkpoint, PercHead) else PercHead.from_pretrained(checkpoint)
    model = model.eval()
    size = cfg.size or model.config.image_size
    dataset = read_dataset(data)
    split = dataset.split(cfg.split)
    subjects = [s for s in split if s.kind == "studio" and len(s.views) >= 2]
    if not subjects:
        raise ValueError(f"dataset {dataset.root} has no multi-view (studio) subject in split '{cfg.split}': "
                         "held-out novel/extreme views need several cameras per subject")
    if cfg.max_subjects is not None:
        subjects = subjects[: cfg.max_subjects]
    rows: list[dict[str, Any]] = []
    figure_cells: list[Tensor] = []
    figure_labels: list[str] = []
    without: dict[str, list[str]] = {s: [] for s in SETTINGS}
    for n, subject in enumerate(subjects):
        names = [v.name for v in subject.views]
        index = {name: i for i, name in enumerate(names)}
        views = views_from_cameras(names, torch.stack([v.world_to_cam for v in subject.views]))
        cache: dict[int, tuple[Tensor, Tensor]] = {}
        for setting in SETTINGS:
            pairs = view_pairs(views, setting, cfg.protocol)  # type: ignore[arg-type]
            if not pairs:
                without[setting].append(subject.id)
            for pair in pairs:
                indices = [index[pair.input.name]] + [index[t.name] for t in pair.targets]
                batch = collate([_sample(subject, indices, cache)], model.config.image_size, size)
                targets = batch.targets[:, 1:]  # view 0 of the batch is the input
                preds = predict(model, batch.input_image, batch.input_mask, batch.viewmats[:, 1:],
                                batch.Ks[:, 1:], size, cfg)
                for method, pred in preds.items():
                    p = psnr(pred[0], targets[0])
                    s = ssim(pred[0], targets[0])
                    for t, pv, sv in zip(pair.targets, p.tolist(), s.tolist(), strict=True):
                        rows.append({"subject": subject.id, "setting": pair.setting, "group": _group(pair.setting),
                                     "input": pair.input.name, "input_yaw_deg": round(pair.input.yaw_deg, 2),
                                     "target": t.name, "target_yaw_deg": round(t.yaw_deg, 2),
                                     "method": method, "psnr": pv, "ssim": sv})
                if figure is not None and n < 4:
                    inp = torch.nn.functional.interpolate(batch.input_image, size=(size, size), mode="bilinear",
                                                          antialias=True, align_corners=False)[0]
                    figure_cells += [inp, targets[0, 0]] + [preds[m][0, 0] for m in METHODS]
                    figure_labels += [f"{subject.id[-8:]} {pair.setting[:12]}", f"target {pair.targets[0].name}",
                                      "mean-colour template", "model", "model + SHP-CNN"]
        if progress:
            print(f"eval-heldout: {n + 1}/{len(subjects)} subjects ({time.perf_counter() - t_start:.0f} s)",
                  flush=True)
    if figure is not None and figure_cells:
        from perchead.io.media import save_grid

        save_grid([c.clamp(0, 1).permute(1, 2, 0) for c in figure_cells], figure, 2 + len(METHODS), figure_labels)
    summary = summarise(rows)
    info = {
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, PercHead) else "<in-memory model>",
        "model_preset": model.config.preset, "data": str(dataset.root), "split": cfg.split,
        "subjects": len(subjects), "image_size": size, "config": _jsonable(asdict(cfg)),
        "protocol": _jsonable(describe_protocol(cfg.protocol)),
        "subjects_without_pairs": without,
        "baseline": (f"Gaussians at the model's {model.template.num_points} template points, isotropic "
                     f"std {cfg.baseline_scale} x point spacing ({model.template.point_spacing():.5f} m), "
                     f"identity rotation, opacity {cfg.baseline_opacity}, colour = mask-weighted mean RGB of "
                     "the input image"),
        "metrics": "psnr (dB, data range 1, unmasked) and ssim (Gaussian 11x11, sigma 1.5), on white; "
                   "mean over target images",
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads".strip(),
    }
    return HeldoutResult(rows, summary, checks(summary), info)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per (group, method) for the groups novel, extreme, and each extreme direction."""
    out = []
    settings = sorted({r["setting"] for r in rows if r["group"] == "extreme"})
    for group in ("novel", "extreme", *settings):
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method and (r["group"] == group or r["setting"] == group)]
            if not sel:
                continue
            finite = [r["psnr"] for r in sel if math.isfinite(r["psnr"])]
            out.append({"group": group, "method": method, "images": len(sel),
                        "subjects": len({r["subject"] for r in sel}),
                        "psnr": sum(finite) / len(finite) if finite else float("nan"),
                        "psnr_infinite": len(sel) - len(finite),
                        "ssim": sum(r["ssim"] for r in sel) / len(sel)})
    return out


def checks(summary: Sequence[dict[str, Any]], margin_db: float = 2.0) -> dict[str, Any]:
    """The issue's acceptance checks: the sharpened model beats the mean-colour template by ``margin_db``
    PSNR on novel and on extreme views, and sharpening does not lower the PSNR."""
    value = {(s["group"], s["method"]): s["psnr"] for s in summary}
    out: dict[str, Any] = {"margin_db_required": margin_db}
    ok = True
    for group in SETTINGS:
        if (group, "model_sharpened") not in value:
            out[group] = {"evaluated": False}
            ok = False
            continue
        base, raw, sharp = (value[(group, m)] for m in METHODS)
        entry = {"model_sharpened_minus_baseline_db": sharp - base, "model_minus_baseline_db": raw - base,
                 "sharpened_minus_model_db": sharp - raw}
        entry["beats_baseline"] = bool(sharp - base >= margin_db)
        entry["sharpening_not_worse"] = bool(sharp >= raw)
        ok = ok and entry["beats_baseline"] and entry["sharpening_not_worse"]
        out[group] = entry
    out["all_pass"] = ok
    return out


def format_table(result: HeldoutResult) -> str:
    """A markdown table of the summary, followed by the checks."""
    lines = ["| views | method | images | subjects | PSNR (dB) | SSIM |", "|---|---|---:|---:|---:|---:|"]
    for s in result.summary:
        lines.append(f"| {s['group']} | {s['method']} | {s['images']} | {s['subjects']} | {s['psnr']:.2f} | "
                     f"{s['ssim']:.4f} |")
    c = result.checks
    for group in SETTINGS:
        e = c.get(group, {})
        if "model_sharpened_minus_baseline_db" not in e:
            lines.append(f"\n{group}: not evaluated (no pairs)")
            continue
        lines.append(f"\n{group}: sharpened model - template = {e['model_sharpened_minus_baseline_db']:+.2f} dB "
                     f"(need >= {c['margin_db_required']:+.1f}: {'PASS' if e['beats_baseline'] else 'FAIL'}); "
                     f"sharpened - unsharpened = {e['sharpened_minus_model_db']:+.3f} dB "
                     f"({'PASS' if e['sharpening_not_worse'] else 'FAIL'})")
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# -- command line -------------------------------------------------------------------------------------------
def eval_heldout(
    checkpoint: Annotated[str, tyro.conf.arg(help="model folder (config.json + model.safetensors) or hub id")],
    data: Annotated[Path, tyro.conf.arg(help="dataset folder in perchead's format, e.g. from `perchead synth`")],
    out: Annotated[Path | None, tyro.conf.arg(help="write the summary, checks and per-image rows as JSON")] = None,
    figure: Annotated[Path | None, tyro.conf.arg(help="save a PNG grid of examples")] = None,
    config: Annotated[HeldoutConfig, tyro.conf.arg(name="")] = HeldoutConfig(),  # noqa: B008 -- tyro default
) -> int:
    """Evaluate a checkpoint on held-out synthetic subjects (novel and extreme views) against the template
    painted with the input's mean colour; prints a table, optionally writes JSON. Exits 0 whatever the
    numbers (the checks are in the table and the JSON)."""
    result = evaluate_heldout(checkpoint, data, config, progress=True, figure=figure)
    print(format_table(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(_jsonable(result.to_json()), indent=1) + "\n")
        tmp.replace(out)
        print(f"wrote {out}")
    return 0


__all__ = ["BASELINE", "METHODS", "SETTINGS", "HeldoutConfig", "HeldoutResult", "checks", "eval_heldout",
           "evaluate_heldout", "format_table", "mean_colour_template", "mean_foreground_colour", "predict",
           "summarise"]

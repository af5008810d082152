"""Held-out evaluation of a checkpoint on the test subjects of a dataset in perchead's format.

For every multi-view ("studio") subject of the split, the view pairs of the novel, extreme and
opposite-profile tasks of :mod:`perchead.eval.protocol` are reconstructed from their input view and rendered
at the target cameras by three methods, then scored with the project's PSNR and SSIM (unmasked, on white,
as in the paper):

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
clamped). Means are over target images; every pair of every subject counts once per target. The loop
(framing, methods, scoring) is :mod:`perchead.eval.harness`, shared with ``perchead eval``.

    perchead eval-heldout --checkpoint src/perchead/assets/demo --data outputs/demo/data --out heldout.json
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro
from torch import Tensor

from perchead.geometry import Gaussians
from perchead.model import PercHead

from .harness import (
    BASELINE,
    SETTINGS,
    SHARPENED_SUFFIX,
    Case,
    EvalConfig,
    MeanColourTemplate,
    ModelMethod,
    evaluate,
    finite_mean,
    iter_groups,
    mean_colour_gaussians,
    mean_foreground_colour,
)
from .metrics import MetricSuite
from .protocol import describe_protocol

METHODS: tuple[str, ...] = (BASELINE, "model", "model" + SHARPENED_SUFFIX)
# The groups the acceptance checks need: every task's main group (extreme_back is reported, not checked).
CHECKED: tuple[str, ...] = SETTINGS
HeldoutConfig = EvalConfig  # the options of `perchead eval-heldout` (the shared evaluation settings)


@dataclass
class HeldoutResult:
    rows: list[dict[str, Any]]
    """one per (subject, pair, target, method): subject, setting, group, input, target, their yaw/pitch,
    method, psnr, ssim"""
    summary: list[dict[str, Any]]
    """one per (group, method): group (novel / extreme / extreme_back / opposite_profile / each
    opposite-profile direction), images, subjects, psnr, ssim"""
    checks: dict[str, Any]
    info: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "checks": self.checks, "info": self.info, "rows": self.rows}


# -- the baseline -------------------------------------------------------------------------------------------
def mean_colour_template(model: PercHead, image: Tensor, mask: Tensor, opacity: float = 0.9,
                         scale: float = 0.5) -> Gaussians:
    """The baseline Gaussians [B, N] on the model's own template (see
    :func:`perchead.eval.harness.mean_colour_gaussians`)."""
    return mean_colour_gaussians(model.template, image, mask, opacity, scale)


def _methods(model: PercHead, config: EvalConfig, source: str = "") -> list:
    return [MeanColourTemplate(model.template, model.config.image_size, config.baseline_opacity,
                               config.baseline_scale),
            ModelMethod("model", model, sharpened=True, source=source)]


@torch.no_grad()
def predict(model: PercHead, image: Tensor, mask: Tensor, viewmats: Tensor, Ks: Tensor, size: int,
            config: EvalConfig, input_camera: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """Renders [B, C, 3, size, size] in [0, 1] of every method for inputs [B, ...] and cameras [B, C, ...]."""
    out: dict[str, Tensor] = {}
    for method in _methods(model, config):
        out.update(method.render(image, mask, viewmats, Ks, size, config.backend, input_camera))
    return out


# -- evaluation ---------------------------------------------------------------------------------------------
def evaluate_heldout(checkpoint: str | Path | PercHead, data: str | Path, config: EvalConfig | None = None,
                     progress: bool = False, figure: str | Path | None = None) -> HeldoutResult:
    """Score the model and the mean-colour template on the held-out subjects (see the module docstring).

    ``figure``: also save a PNG grid with one row per (subject, setting) of the first subjects: input,
    target, baseline, model, sharpened (for the first target of each pair).
    """
    cfg = config or EvalConfig()
    in_memory = isinstance(checkpoint, PercHead)
    model = checkpoint if in_memory else PercHead.from_pretrained(checkpoint)
    model = model.eval()
    cells: list[Tensor] = []
    labels: list[str] = []

    def collect(case: Case) -> None:
        if case.index < 4:
            cells.extend([case.input, case.targets[0]] + [case.renders[m][0] for m in METHODS])
            labels.extend([f"{case.subject[-8:]} {case.pair.setting[:12]}", f"target {case.pair.targets[0].name}",
                           "mean-colour template", "model", "model + SHP-CNN"])

    methods = _methods(model, cfg, "" if in_memory else str(checkpoint))
    suite = MetricSuite(["psnr", "ssim"])
    run = evaluate(methods, data, cfg, suite, progress, collect if figure is not None else None, "eval-heldout")
    if figure is not None and cells:
        from perchead.io.media import save_grid

        save_grid([c.clamp(0, 1).permute(1, 2, 0) for c in cells], figure, 2 + len(METHODS), labels)
    rows = suite.rows
    summary = summarise(rows)
    info = {
        "checkpoint": "<in-memory model>" if in_memory else str(checkpoint),
        "model_preset": model.config.preset, "data": str(run.data), "split": cfg.split,
        "subjects": len(run.subjects), "image_size": run.size, "config": plain_json(asdict(cfg)),
        "protocol": plain_json(describe_protocol(cfg.protocol)),
        "subjects_without_pairs": run.without_pairs,
        "baseline": methods[0].description,
        "metrics": "psnr (dB, data range 1, unmasked) and ssim (Gaussian 11x11, sigma 1.5), on white; "
                   "mean over target images",
        "seconds": round(run.seconds, 1),
        "machine": machine(),
    }
    return HeldoutResult(rows, summary, checks(summary), info)


def machine() -> str:
    """CPU (model and cores where Linux says), torch version and threads, ending in "torch X, N threads"."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores), torch {torch.__version__}, {torch.get_num_threads()} threads"


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per (group, method) for the groups of :func:`perchead.eval.harness.iter_groups`."""
    out = []
    for group in iter_groups(rows):
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method and (r["group"] == group or r["setting"] == group)]
            if not sel:
                continue
            psnrs = [r["psnr"] for r in sel]
            out.append({"group": group, "method": method, "images": len(sel),
                        "subjects": len({r["subject"] for r in sel}),
                        "psnr": finite_mean(psnrs), "psnr_infinite": sum(1 for v in psnrs if v == float("inf")),
                        "ssim": sum(r["ssim"] for r in sel) / len(sel)})
    return out


def checks(summary: Sequence[dict[str, Any]], margin_db: float = 2.0) -> dict[str, Any]:
    """The issue's acceptance checks: the sharpened model beats the mean-colour template by ``margin_db``
    PSNR on each task (novel, extreme, opposite_profile; ``CHECKED``), and sharpening does not lower the
    PSNR. A task without pairs fails (``evaluated: False``)."""
    value = {(s["group"], s["method"]): s["psnr"] for s in summary}
    out: dict[str, Any] = {"margin_db_required": margin_db}
    ok = True
    for group in CHECKED:
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


def summary_table(summary: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per (group, method) of a summary, PSNR and SSIM."""
    lines = ["| views | method | images | subjects | PSNR (dB) | SSIM |", "|---|---|---:|---:|---:|---:|"]
    return lines + [f"| {s['group']} | {s['method']} | {s['images']} | {s['subjects']} | {s['psnr']:.2f} | "
                    f"{s['ssim']:.4f} |" for s in summary]


def format_table(result: HeldoutResult) -> str:
    """A markdown table of the summary, followed by the checks."""
    lines = summary_table(result.summary)
    c = result.checks
    for group in CHECKED:
        e = c.get(group, {})
        if "model_sharpened_minus_baseline_db" not in e:
            lines.append(f"\n{group}: not evaluated (no pairs)")
            continue
        lines.append(f"\n{group}: sharpened model - template = {e['model_sharpened_minus_baseline_db']:+.2f} dB "
                     f"(need >= {c['margin_db_required']:+.1f}: {'PASS' if e['beats_baseline'] else 'FAIL'}); "
                     f"sharpened - unsharpened = {e['sharpened_minus_model_db']:+.3f} dB "
                     f"({'PASS' if e['sharpening_not_worse'] else 'FAIL'})")
    return "\n".join(lines)


def plain_json(obj: Any) -> Any:
    """``obj`` with everything JSON cannot hold (paths, tuples, dataclass leftovers) turned into strings/lists."""
    return json.loads(json.dumps(obj, default=str))


# -- command line -------------------------------------------------------------------------------------------
def eval_heldout(
    checkpoint: Annotated[str, tyro.conf.arg(help="model folder (config.json + model.safetensors) or hub id")],
    data: Annotated[Path, tyro.conf.arg(help="dataset folder in perchead's format, e.g. from `perchead synth`")],
    out: Annotated[Path | None, tyro.conf.arg(help="write the summary, checks and per-image rows as JSON")] = None,
    figure: Annotated[Path | None, tyro.conf.arg(help="save a PNG grid of examples")] = None,
    config: Annotated[EvalConfig, tyro.conf.arg(name="")] = EvalConfig(),  # noqa: B008 -- tyro default
) -> int:
    """Evaluate a checkpoint on held-out synthetic subjects (novel, extreme, opposite-profile views) against
    the template painted with the input's mean colour; prints a table, optionally writes JSON. Exits 0 whatever the
    numbers (the checks are in the table and the JSON)."""
    result = evaluate_heldout(checkpoint, data, config, progress=True, figure=figure)
    print(format_table(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(plain_json(result.to_json()), indent=1) + "\n")
        tmp.replace(out)
        print(f"wrote {out}")
    return 0


__all__ = ["BASELINE", "CHECKED", "METHODS", "SETTINGS", "HeldoutConfig", "HeldoutResult", "checks", "eval_heldout",
           "evaluate_heldout", "format_table", "machine", "mean_colour_template", "mean_foreground_colour",
           "plain_json", "predict", "summarise", "summary_table"]

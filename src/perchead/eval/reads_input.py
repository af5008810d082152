"""Does the network read its input? Colours of hair and skin at the unseen sides, against the truth.

For every multi-view subject of a synthetic dataset (``perchead synth``: every view has an exact
segmentation map), the view closest to frontal is the input and every other view a target. Each method turns
the input into Gaussians once; they are rendered at every target camera on white.

* **colour rows**: in the back view (|yaw| >= 150, the one nearest pitch 0) and the two profiles (the views
  nearest yaw +90 and -90, within 30 degrees), the median CIE Lab of the target's hair pixels and of its skin
  pixels (classes ``hair`` and ``skin`` of the map, at least ``min_pixels``) in the truth and in each render
  at the same pixels, and their CIE76 difference (delta E). Summaries per (view, class, method): the median
  delta E, the correlation across subjects of L*, a* and b* (mean of the three) between render and truth,
  and the spread ratio -- how much the renders' colours vary between subjects against how much the truths
  do (the mean over L*, a*, b* of std(render) / std(truth)): a network that paints every head alike has a
  spread near 0 whatever its delta E.
* **yaw buckets**: the PSNR (unmasked, on white) of every target view, averaged per |target yaw| bucket.
* **back view**: the PSNR of each subject's back view (the colour rows' one) per method, and each method's
  lead over ``silhouette_mean_colour`` there: its mean over subjects with the standard error of that mean
  (issue 27 asks the network for 1.5 dB; on 16 subjects the error of the mean was 0.4 dB, docs/results.md).

Methods: ``model`` (the network alone, no fit, no SHP-CNN), ``template_mean_colour`` (no network: the
template in the input's mean colour, :func:`perchead.eval.harness.mean_colour_gaussians`),
``silhouette_mean_colour`` (the model's own render with every pixel painted the input's mean colour, alpha
kept: a network that only gets the shape right scores this), and any extra checkpoint given (e.g. the
``lifting`` baseline, which is handed the input view's camera).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.data.format import SEG, HeadDataset, SubjectRecord, ViewRecord, load_view, read_dataset
from perchead.model import PercHead
from perchead.render import rasterize

from .harness import BASELINE, mean_colour_gaussians, mean_foreground_colour

YAW_BUCKETS: tuple[tuple[float, float], ...] = ((0, 30), (30, 60), (60, 105), (105, 150), (150, 181))
COLOUR_VIEWS = ("back", "left_profile", "right_profile")
CLASSES = ("hair", "skin")
SILHOUETTE = "silhouette_mean_colour"


@dataclass
class ReadsInputResult:
    colour_rows: list[dict[str, Any]]
    """per (subject, view, class, method): truth and render Lab medians, delta E"""
    psnr_rows: list[dict[str, Any]]
    """per (subject, target view, method): yaw, pitch, psnr, role (the view's name among ``COLOUR_VIEWS``, or
    None)"""
    colour_summary: list[dict[str, Any]]
    yaw_summary: list[dict[str, Any]]
    back_summary: list[dict[str, Any]] = field(default_factory=list)
    """per method: subjects, mean back-view PSNR, lead over ``silhouette_mean_colour`` (mean, standard error)"""


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] sRGB in [0, 1] -> CIE Lab (D65)."""
    from skimage.color import rgb2lab

    return rgb2lab(np.clip(rgb, 0.0, 1.0))


def colour_views(views: Sequence[ViewRecord]) -> dict[str, ViewRecord]:
    """The back view and the two profiles of a subject (those it has)."""
    yaw = [(v, float(v.yaw_deg or 0.0), abs(float(v.pitch_deg or 0.0))) for v in views]
    out = {}
    backs = [(v, p) for v, y, p in yaw if abs(y) >= 150]
    if backs:
        out["back"] = min(backs, key=lambda t: t[1])[0]
    for name, centre in (("left_profile", 90.0), ("right_profile", -90.0)):
        near = [(v, abs(y - centre)) for v, y, _ in yaw if abs(y - centre) <= 30]
        if near:
            out[name] = min(near, key=lambda t: t[1])[0]
    return out


def input_view(views: Sequence[ViewRecord]) -> ViewRecord:
    return min(views, key=lambda v: abs(float(v.yaw_deg or 0.0)) + abs(float(v.pitch_deg or 0.0)))


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


GaussianFn = Callable[[Tensor, Tensor, ViewRecord], Any]


def model_method(model: PercHead) -> GaussianFn:
    """image [1,3,S,S], mask [1,1,S,S], the input view -> the model's Gaussians (the lifting decoder gets
    the input view's camera, scaled to the model's input size)."""
    s = model.config.image_size

    def run(image: Tensor, mask: Tensor, view: ViewRecord):
        camera = None
        if model.config.decoder == "lifting":
            K = view.K.clone().float()
            K[:2] *= s / view.width
            camera = (view.world_to_cam.float()[None], K[None])
        return model(_resize(image, s), _resize(mask, s), camera=camera)

    return run


@torch.no_grad()
def measure(models: dict[str, PercHead], data: str | Path | HeadDataset, split: str = "all",
            min_pixels: int = 20, max_subjects: int | None = None, views: str = "all") -> ReadsInputResult:
    """Colour and yaw-bucket rows of every method on the multi-view subjects of ``split`` ("all": every
    subject). ``views``: "all" renders every target view, "colour" only the back and the profiles (faster;
    the yaw buckets then hold those alone). ``models``: name -> network; the first one also gives the
    template of the baseline and the silhouette of ``silhouette_mean_colour``."""
    if not models:
        raise ValueError("no model to measure")
    ds = data if isinstance(data, HeadDataset) else read_dataset(data)
    subjects: list[SubjectRecord] = [s for s in (ds.subjects if split == "all" else ds.split(split))
                                     if s.kind == "studio" and len(s.views) > 1]
    if max_subjects is not None:
        subjects = subjects[:max_subjects]
    if not subjects:
        raise ValueError(f"{ds.root}: no multi-view subject in split {split!r}")
    first = next(iter(models.values())).eval()
    methods: dict[str, GaussianFn] = {name: model_method(m.eval()) for name, m in models.items()}
    methods[BASELINE] = lambda image, mask, view: mean_colour_gaussians(first.template, image, mask)
    first_name = next(iter(models))
    if views not in ("all", "colour"):
        raise ValueError(f"views must be 'all' or 'colour', got {views!r}")
    colour_rows, psnr_rows = [], []
    for subj in subjects:
        src = input_view(subj.views)
        loaded = load_view(src)
        image, mask = loaded.image[None], loaded.mask[None]
        mean_rgb = mean_foreground_colour(image, mask)[0]
        gaussians = {name: fn(image, mask, src)[0].to(torch.float32) for name, fn in methods.items()}
        picked = {v.name: k for k, v in colour_views(subj.views).items()}
        for view in subj.views:
            if view is src or (views == "colour" and view.name not in picked):
                continue
            lv = load_view(view)
            truth = (lv.image * lv.mask + (1 - lv.mask)).permute(1, 2, 0).numpy()
            renders = {}
            for name, g in gaussians.items():
                r = rasterize(g, view.world_to_cam.float()[None], view.K.float()[None], view.width, view.height,
                              background=1.0)
                renders[name] = r.rgb[0].clamp(0, 1).numpy()
                if name == first_name:
                    alpha = r.alpha[0].numpy().reshape(truth.shape[:2] + (1,))
                    renders[SILHOUETTE] = alpha * mean_rgb.numpy() + (1 - alpha)
            which = picked.get(view.name)
            for name, pred in renders.items():
                mse = float(((pred - truth) ** 2).mean())
                psnr_rows.append(dict(subject=subj.id, view=view.name, yaw=float(view.yaw_deg or 0.0),
                                      pitch=float(view.pitch_deg or 0.0), method=name,
                                      psnr=10 * math.log10(1.0 / max(mse, 1e-10)), role=which))
            if which is None or lv.segmentation is None:
                continue
            lab_truth = srgb_to_lab(truth)
            for cls in CLASSES:
                sel = (lv.segmentation == SEG[cls]).numpy()
                if sel.sum() < min_pixels:
                    continue
                t = np.median(lab_truth[sel], axis=0)
                for name, pred in renders.items():
                    p = np.median(srgb_to_lab(pred)[sel], axis=0)
                    colour_rows.append(dict(subject=subj.id, view=which, cls=cls, method=name,
                                            truth_lab=t.tolist(), pred_lab=p.tolist(),
                                            delta_e=float(np.linalg.norm(p - t))))
    return ReadsInputResult(colour_rows, psnr_rows, summarise_colour(colour_rows), summarise_yaw(psnr_rows),
                            summarise_back(psnr_rows))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summarise_colour(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["view"], r["cls"], r["method"]) for r in rows},
                  key=lambda k: (COLOUR_VIEWS.index(k[0]), CLASSES.index(k[1]), k[2]))
    for view, cls, method in keys:
        sel = [r for r in rows if (r["view"], r["cls"], r["method"]) == (view, cls, method)]
        t = np.array([r["truth_lab"] for r in sel])
        p = np.array([r["pred_lab"] for r in sel])
        de = np.array([r["delta_e"] for r in sel])
        corr = [_corr(t[:, c], p[:, c]) for c in range(3)]
        spread = [p[:, c].std() / max(t[:, c].std(), 1e-9) for c in range(3)]
        out.append(dict(view=view, cls=cls, method=method, subjects=len(sel),
                        median_delta_e=float(np.median(de)), corr_lab=float(np.nanmean(corr)) if not all(
                            math.isnan(c) for c in corr) else float("nan"),
                        corr_L=corr[0], spread=float(np.mean(spread))))
    return out


def summarise_yaw(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for lo, hi in YAW_BUCKETS:
        for method in methods:
            sel = [r["psnr"] for r in rows if r["method"] == method and lo <= abs(r["yaw"]) < hi]
            if sel:
                out.append(dict(bucket=f"{lo}-{min(hi, 180)}", method=method, images=len(sel),
                                psnr=float(np.mean(sel))))
    return out


def summarise_back(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, over the subjects with a back view: the mean back-view PSNR and the mean and standard error
    of the per-subject lead over ``silhouette_mean_colour`` (NaN for that method itself, or with one subject)."""
    back = {(r["subject"], r["method"]): r["psnr"] for r in rows if r["role"] == "back"}
    subjects = list(dict.fromkeys(s for s, _ in back))
    out = []
    for method in dict.fromkeys(m for _, m in back):
        mine = [s for s in subjects if (s, method) in back]
        lead = np.array([back[s, method] - back[s, SILHOUETTE] for s in mine if (s, SILHOUETTE) in back])
        known = method != SILHOUETTE and len(lead) > 1
        out.append(dict(method=method, subjects=len(mine), psnr=float(np.mean([back[s, method] for s in mine])),
                        lead=float(lead.mean()) if known else float("nan"),
                        lead_se=float(lead.std(ddof=1) / math.sqrt(len(lead))) if known else float("nan")))
    return out


def format_tables(result: ReadsInputResult) -> str:
    lines = ["| view | class | method | subjects | median delta E | corr (Lab) | corr L* | spread |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result.colour_summary:
        lines.append(f"| {r['view']} | {r['cls']} | {r['method']} | {r['subjects']} | {r['median_delta_e']:.1f} | "
                     f"{r['corr_lab']:.2f} | {r['corr_L']:.2f} | {r['spread']:.2f} |")
    lines += ["", "| target abs(yaw) | method | images | PSNR (dB) |", "|---|---|---:|---:|"]
    for r in result.yaw_summary:
        lines.append(f"| {r['bucket']} | {r['method']} | {r['images']} | {r['psnr']:.2f} |")
    if result.back_summary:
        lines += ["", f"| back view: method | subjects | PSNR (dB) | lead over {SILHOUETTE} (mean +- standard error) |",
                  "|---|---:|---:|---|"]
        for r in result.back_summary:
            lead = "-" if math.isnan(r["lead"]) else f"{r['lead']:+.2f} +- {r['lead_se']:.2f}"
            lines.append(f"| {r['method']} | {r['subjects']} | {r['psnr']:.2f} | {lead} |")
    return "\n".join(lines)


def swatch_figure(result: ReadsInputResult, path: str | Path, view: str = "back", cls: str = "hair") -> Path | None:
    """One row per subject, one column per method (the truth first): the median colour of ``cls`` in ``view``
    as a swatch, with its delta E. A network that paints every head alike shows one colour down its column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import lab2rgb

    rows = [r for r in result.colour_rows if r["view"] == view and r["cls"] == cls]
    if not rows:
        return None
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["subject"], r["method"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(1.3 * (len(methods) + 1) + 1.5, 0.32 * len(subjects) + 1.0))
    for i, subj in enumerate(subjects):
        truth = next(cell[subj, m]["truth_lab"] for m in methods if (subj, m) in cell)
        for j, (lab, text) in enumerate([(truth, "")] + [
                (cell[subj, m]["pred_lab"], f"{cell[subj, m]['delta_e']:.0f}") if (subj, m) in cell else (None, "")
                for m in methods]):
            if lab is None:
                continue
            rgb = lab2rgb(np.asarray(lab, dtype=float)[None, None])[0, 0]
            ax.add_patch(plt.Rectangle((j, i), 0.92, 0.88, color=rgb))
            if text:
                ax.text(j + 0.46, i + 0.44, text, ha="center", va="center", fontsize=7,
                        color="white" if lab[0] < 55 else "black")
    ax.set_xlim(0, len(methods) + 1)
    ax.set_ylim(len(subjects), 0)
    ax.set_xticks([j + 0.46 for j in range(len(methods) + 1)], ["truth", *methods], rotation=20, ha="right",
                  fontsize=8)
    ax.set_yticks([i + 0.44 for i in range(len(subjects))], subjects, fontsize=7)
    ax.set_title(f"{cls} colour in the {view.replace('_', ' ')} view (number: delta E to the truth)", fontsize=9)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["ReadsInputResult", "colour_views", "format_tables", "measure", "summarise_colour", "summarise_yaw",
           "swatch_figure"]

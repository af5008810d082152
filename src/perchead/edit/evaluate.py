"""Held-out evaluation of an editing network on multi-view subjects with segmentation maps (``perchead synth``).

* **Reconstruction from (map, style)**: for every studio subject of the split and every view pair of the
  evaluation protocol (:mod:`perchead.eval.protocol`: novel and extreme), the editing network gets the input
  view's *own* segmentation map and its *own* matted image as the style, and is rendered at the target
  cameras. Scored with the project's PSNR / SSIM (unmasked, on white) against the mean-colour template of
  :mod:`perchead.eval.heldout` (no network) and, when given, a reconstruction model fed the input image.
* **Disentanglement**: for every ordered pair (i, j) of the first subjects' input views, the Gaussians of
  (map i, style i) against (map i, style j) -- a *style swap* -- and (map j, style i) -- a *map swap*. Gaussians
  correspond index by index (one per template point), so the mean distance between their centres says how
  much a change moves the geometry, and the mean absolute RGB difference how much it recolours. A
  disentangled network moves Gaussians far less under a style swap than under a map swap.

    perchead eval-edit --checkpoint demo --data outputs/demo/data --reconstruction src/perchead/assets/demo
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro
from torch import Tensor

from perchead.data.format import SubjectRecord, load_view, read_dataset
from perchead.eval.harness import GROUPS, EvalConfig, eval_subjects, finite_mean, group_of, render_views, sharpen_views
from perchead.eval.heldout import machine, mean_colour_template, plain_json, summary_table
from perchead.eval.metrics import psnr, ssim
from perchead.eval.protocol import describe_protocol, view_pairs, views_from_cameras
from perchead.geometry import Gaussians
from perchead.model import PercHead

from .map_eval import MapEvalConfig, evaluate_map_fidelity, fitted_disentanglement, format_fidelity
from .network import EditNetwork, load_edit_network

BASELINE = "template_mean_colour"
SETTINGS: tuple[str, ...] = ("novel", "extreme", "opposite_profile")  # the tasks of perchead.eval.protocol


@dataclass
class EditEvalConfig(EvalConfig):
    """What is evaluated and how (written into the result JSON): the held-out evaluation's settings, plus the
    disentanglement measure's."""

    disentangle_subjects: int = 12
    """subjects whose input views are swapped pairwise in the disentanglement measure (all ordered pairs)"""
    map_fidelity: MapEvalConfig = field(default_factory=MapEvalConfig)
    """does the head follow the map: IoU from the map's camera, controlled edits, the fit (map_eval.py);
    ``--map-fidelity.subjects 0`` skips it"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.disentangle_subjects < 2:
            raise ValueError(f"disentangle_subjects must be >= 2 (it swaps pairs), got {self.disentangle_subjects}")


@dataclass
class EditEvalResult:
    rows: list[dict[str, Any]]
    """one per (subject, pair, target, method): subject, setting, group, input, target, method, psnr, ssim"""
    summary: list[dict[str, Any]]
    """one per (group, method): images, subjects, mean psnr, mean ssim"""
    disentanglement: dict[str, Any]
    info: dict[str, Any]
    map_fidelity: dict[str, Any] | None = None
    """:func:`perchead.edit.map_eval.evaluate_map_fidelity`'s result, with ``fitted_disentanglement``"""

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "disentanglement": self.disentanglement,
                "map_fidelity": self.map_fidelity, "info": self.info, "rows": self.rows}


def _sample(subject: SubjectRecord, indices: Sequence[int], cache: dict[int, Any]) -> dict:
    """A sampler-style sample (view 0 = input, composited over white) with the input's segmentation map."""
    for i in indices:
        if i not in cache:
            lv = load_view(subject.views[i])
            cache[i] = (lv.image * lv.mask + (1.0 - lv.mask), lv.mask, lv.segmentation)
    seg = cache[indices[0]][2]
    if seg is None:
        raise ValueError(f"subject {subject.id}, view {subject.views[indices[0]].name} has no segmentation map: "
                         "the editing network needs one (`perchead synth` writes exact maps)")
    views = [subject.views[i] for i in indices]
    return {"images": torch.stack([cache[i][0] for i in indices]), "masks": torch.stack([cache[i][1] for i in indices]),
            "viewmats": torch.stack([v.world_to_cam for v in views]), "Ks": torch.stack([v.K for v in views]),
            "segmentation": seg[None], "subject": subject.id}



@torch.no_grad()
def predict(net: EditNetwork, batch: Any, size: int, config: EditEvalConfig,
            reconstruction: PercHead | None = None) -> dict[str, Tensor]:
    """Renders [B, C, 3, size, size] in [0, 1] at the target cameras (views 1.. of ``batch``) per method."""
    vm, Ks = batch.viewmats[:, 1:], batch.Ks[:, 1:]
    base = mean_colour_template(net, batch.input_image, batch.input_mask, config.baseline_opacity,
                                config.baseline_scale)
    raw = render_views(net(batch.input_image, batch.input_mask, batch.input_segmentation), vm, Ks, size, config.backend)
    out = {BASELINE: render_views(base, vm, Ks, size, config.backend), "edit": raw,
           "edit_sharpened": sharpen_views(net, raw)}
    if reconstruction is not None:
        rec = render_views(reconstruction(batch.input_image, batch.input_mask), vm, Ks, size, config.backend)
        out["reconstruction_sharpened"] = sharpen_views(reconstruction, rec)
    return {k: v.clamp(0, 1) for k, v in out.items()}


@torch.no_grad()
def disentanglement(net: EditNetwork, segmentation: Tensor, image: Tensor, mask: Tensor) -> dict[str, Any]:
    """Style swaps vs map swaps over all ordered pairs of the K inputs (segmentation [K,S,S], image
    [K,3,S,S], mask [K,1,S,S]): mean Gaussian centre displacement (metres) and mean |RGB| change."""
    k = segmentation.shape[0]
    if k < 2:
        raise ValueError("disentanglement needs at least two subjects")
    styles = net.style_from_image(image, mask)
    base = net.generate(segmentation, styles)
    sums = {"style_swap": [0.0, 0.0], "map_swap": [0.0, 0.0]}
    for i in range(k):
        others = [j for j in range(k) if j != i]
        swaps = {"style_swap": net.generate(segmentation[i:i + 1].expand(len(others), -1, -1), styles[others]),
                 "map_swap": net.generate(segmentation[others], styles[i:i + 1].expand(len(others), -1))}
        for name, g in swaps.items():
            sums[name][0] += float((g.means - base.means[i:i + 1]).norm(dim=-1).mean(-1).sum())
            sums[name][1] += float((g.rgb - base.rgb[i:i + 1]).abs().mean(dim=(-2, -1)).sum())
    pairs = k * (k - 1)
    out: dict[str, Any] = {"subjects": k, "ordered_pairs": pairs}
    for name, (position, colour) in sums.items():
        out[name] = {"position_m": position / pairs, "rgb": colour / pairs}
    out["position_ratio_style_over_map"] = out["style_swap"]["position_m"] / max(out["map_swap"]["position_m"], 1e-12)
    out["rgb_ratio_style_over_map"] = out["style_swap"]["rgb"] / max(out["map_swap"]["rgb"], 1e-12)
    anchors = net.template.points()[0]
    out["head_size_m"] = float((anchors.max(0).values - anchors.min(0).values).max())
    return out


def between_subjects(g: Gaussians) -> dict[str, float]:
    """Mean Gaussian centre distance (metres) and mean |RGB| difference over all ordered pairs of a batch."""
    k = g.means.shape[0]
    position = (g.means[:, None] - g.means[None]).norm(dim=-1).mean(-1).sum() / (k * (k - 1))
    colour = (g.rgb[:, None] - g.rgb[None]).abs().mean(dim=(-2, -1)).sum() / (k * (k - 1))
    return {"position_m": float(position), "rgb": float(colour)}


def evaluate_edit(checkpoint: str | Path | EditNetwork, data: str | Path, config: EditEvalConfig | None = None,
                  reconstruction: str | Path | PercHead | None = None, clip: str | None = None,
                  progress: bool = False, figure: str | Path | None = None,
                  fidelity_figure: str | Path | None = None) -> EditEvalResult:
    """Score the editing network (and the baseline, and optionally a reconstruction model) on the held-out
    subjects, and measure its disentanglement (see the module docstring). ``figure``: a PNG grid of the first
    subjects' pairs (input, map, target, then each method at the first target); ``fidelity_figure``: the
    first subject's controlled map edits (the map, then front / profile / back of the network's and of the
    fitted head)."""
    from perchead.edit.segmentation import colorize
    from perchead.train.data import collate

    cfg = config or EditEvalConfig()
    t_start = time.perf_counter()
    net = checkpoint if isinstance(checkpoint, EditNetwork) else load_edit_network(checkpoint, clip=clip)
    net = net.eval()
    rec = reconstruction
    if rec is not None and not isinstance(rec, PercHead):
        rec = PercHead.from_pretrained(rec)
    if rec is not None:
        rec = rec.eval()
        if rec.config.image_size != net.config.image_size:
            raise ValueError(f"the reconstruction model takes {rec.config.image_size} px inputs, the editing "
                             f"network {net.config.image_size} px: compare models of the same input size")
    s = net.config.image_size
    size = cfg.size or s
    dataset = read_dataset(data)
    subjects = eval_subjects(dataset, cfg)
    rows: list[dict[str, Any]] = []
    cells: list[Tensor] = []
    labels: list[str] = []
    frontal: list[Any] = []  # the novel pair's input of each subject, for the disentanglement measure
    for n, subject in enumerate(subjects):
        names = [v.name for v in subject.views]
        index = {name: i for i, name in enumerate(names)}
        views = views_from_cameras(names, torch.stack([v.world_to_cam for v in subject.views]))
        cache: dict[int, Any] = {}
        for setting in SETTINGS:
            for pair in view_pairs(views, setting, cfg.protocol):  # type: ignore[arg-type]
                indices = [index[pair.input.name]] + [index[t.name] for t in pair.targets]
                batch = collate([_sample(subject, indices, cache)], s, size)
                if setting == "novel" and len(frontal) <= n and len(frontal) < cfg.disentangle_subjects:
                    frontal.append(batch)  # one (the most frontal) input per subject
                targets = batch.targets[:, 1:]
                preds = predict(net, batch, size, cfg, rec)
                for method, pred in preds.items():
                    p, q = psnr(pred[0], targets[0]), ssim(pred[0], targets[0])
                    for t, pv, sv in zip(pair.targets, p.tolist(), q.tolist(), strict=True):
                        rows.append({"subject": subject.id, "setting": pair.setting,
                                     "group": group_of(pair.setting),
                                     "input": pair.input.name, "target": t.name, "method": method,
                                     "psnr": pv, "ssim": sv})
                if figure is not None and n < 4:
                    seg = torch.from_numpy(colorize(batch.input_segmentation[0])).permute(2, 0, 1).float() / 255
                    small = [torch.nn.functional.interpolate(x[None], size=(size, size), mode=mode)[0]
                             for x, mode in ((batch.input_image[0], "bilinear"), (seg, "nearest"))]
                    cells += small + [targets[0, 0]] + [pred[0, 0] for pred in preds.values()]
                    labels += [f"{subject.id[-8:]} {pair.setting[:12]}", "its map", f"target {pair.targets[0].name}",
                               *preds]
        if progress:
            print(f"eval-edit: {n + 1}/{len(subjects)} subjects ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if figure is not None and cells:
        from perchead.io.media import save_grid

        save_grid([c.clamp(0, 1).permute(1, 2, 0) for c in cells], figure, 3 + len(preds), labels)
    dis = {"evaluated": False, "why": "fewer than two subjects"}
    if len(frontal) >= 2:
        image, mask = torch.cat([b.input_image for b in frontal]), torch.cat([b.input_mask for b in frontal])
        dis = disentanglement(net, torch.cat([b.input_segmentation for b in frontal]), image, mask)
        if rec is not None:
            # The scale of the swaps: how much the reconstruction model's Gaussians differ between these subjects.
            with torch.no_grad():
                dis["reconstruction_between_subjects"] = between_subjects(rec(image, mask))
    fidelity = None
    if cfg.map_fidelity.subjects > 0:
        cells: list | None = [] if fidelity_figure is not None else None
        fidelity = evaluate_map_fidelity(net, subjects, cfg.map_fidelity, cfg.backend, progress, cells)
        fidelity["fitted_disentanglement"] = fitted_disentanglement(
            net, subjects, cfg.map_fidelity.disentangle_subjects, cfg.map_fidelity.fit, cfg.backend)
        if cells:
            from perchead.io.media import save_grid

            save_grid([c for c, _ in cells], fidelity_figure, 7, [label for _, label in cells])
    info = {
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, EditNetwork) else "<in-memory network>",
        "clip": net.edit_config.clip, "notice": net.notice or None,
        "reconstruction": None if reconstruction is None else (
            str(reconstruction) if not isinstance(reconstruction, PercHead) else "<in-memory model>"),
        "data": str(dataset.root), "split": cfg.split, "subjects": len(subjects), "image_size": size,
        "config": plain_json(asdict(cfg)),
        "protocol": plain_json(describe_protocol(cfg.protocol)),
        "inputs": "edit: the input view's own segmentation map + its own matted image as the style (CLIP); "
                  f"{BASELINE}: the model's template points painted with the input's mean foreground colour "
                  f"(perchead.eval.heldout, opacity {cfg.baseline_opacity}, std {cfg.baseline_scale} x point "
                  "spacing); reconstruction_sharpened: the reconstruction model fed the input image, SHP-CNN on",
        "metrics": "psnr (dB, data range 1, unmasked) and ssim (Gaussian 11x11, sigma 1.5), on white; mean over "
                   "target images; disentanglement on the novel pairs' input views (the most frontal view)",
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": machine(),
    }
    return EditEvalResult(rows, summarise(rows), dis, info, fidelity)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean PSNR / SSIM per (group, method), methods in the order they first appear."""
    out = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for group in GROUPS:
        for method in methods:
            sel = [r for r in rows if r["group"] == group and r["method"] == method]
            if not sel:
                continue
            out.append({"group": group, "method": method, "images": len(sel),
                        "subjects": len({r["subject"] for r in sel}),
                        "psnr": finite_mean([r["psnr"] for r in sel]),
                        "ssim": sum(r["ssim"] for r in sel) / len(sel)})
    return out


def format_table(result: EditEvalResult) -> str:
    """Markdown: the PSNR / SSIM table, then the disentanglement numbers."""
    lines = summary_table(result.summary)
    d = result.disentanglement
    if "style_swap" in d:
        lines += ["", f"Disentanglement over {d['ordered_pairs']} ordered pairs of {d['subjects']} subjects "
                  f"(head size {d['head_size_m'] * 1000:.0f} mm):", "",
                  "| swap | mean Gaussian displacement (mm) | mean abs RGB change |", "|---|---:|---:|"]
        lines += [f"| {name.replace('_', ' ')} | {d[name]['position_m'] * 1000:.3f} | {d[name]['rgb']:.4f} |"
                  for name in ("style_swap", "map_swap")]
        lines += ["", f"style swap / map swap: displacement {d['position_ratio_style_over_map']:.3f}, "
                  f"colour change {d['rgb_ratio_style_over_map']:.2f}"]
        r = d.get("reconstruction_between_subjects")
        if r:
            lines += [f"reconstruction model, between these subjects' inputs: {r['position_m'] * 1000:.3f} mm, "
                      f"RGB {r['rgb']:.4f}"]
    if result.map_fidelity:
        m = result.map_fidelity
        lines += ["", f"Map fidelity from the map's camera ({m['config']['subjects']} subjects, their frontal "
                  "view's map; labels from the unedited map):", "", *format_fidelity(m)]
        d = m.get("fitted_disentanglement", {})
        if "style_swap" in d:
            lines += ["", f"Through the map fit ({d['ordered_pairs']} ordered pairs of {d['subjects']} subjects): "
                      f"style swap {d['style_swap']['position_m'] * 1000:.3f} mm / RGB {d['style_swap']['rgb']:.4f}, "
                      f"map swap {d['map_swap']['position_m'] * 1000:.3f} mm / RGB {d['map_swap']['rgb']:.4f}; "
                      f"map swap / style swap displacement {d['position_ratio_map_over_style']:.2f}"]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------------
def eval_edit(
    data: Annotated[Path, tyro.conf.arg(help="dataset with segmentation maps, e.g. from `perchead synth`")],
    checkpoint: Annotated[str, tyro.conf.arg(help="editing checkpoint folder / hub id, or 'demo'")] = "demo",
    reconstruction: Annotated[str | None, tyro.conf.arg(help="also score this reconstruction model")] = None,
    clip: Annotated[str | None, tyro.conf.arg(help="CLIP replacing the one the checkpoint names")] = None,
    out: Annotated[Path | None, tyro.conf.arg(help="write summary, disentanglement and rows as JSON")] = None,
    figure: Annotated[Path | None, tyro.conf.arg(help="save a PNG grid of examples")] = None,
    fidelity_figure: Annotated[Path | None, tyro.conf.arg(help="save a PNG of the controlled map edits")] = None,
    config: Annotated[EditEvalConfig, tyro.conf.arg(name="")] = EditEvalConfig(),  # noqa: B008 -- tyro default
) -> int:
    """Evaluate an editing network on held-out subjects: (own map + own image style) -> novel / extreme views
    against the mean-colour template, and style-swap vs map-swap disentanglement. Exits 0 whatever the numbers."""
    result = evaluate_edit(checkpoint, data, config, reconstruction, clip, progress=True, figure=figure,
                           fidelity_figure=fidelity_figure)
    print(format_table(result))
    if out is not None:
        from perchead.io.atomic import atomic_write_text

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result.to_json(), indent=1) + "\n")
        print(f"wrote {out}")
    return 0


__all__ = ["BASELINE", "EditEvalConfig", "EditEvalResult", "between_subjects", "disentanglement", "eval_edit",
           "evaluate_edit", "format_table", "predict", "summarise"]

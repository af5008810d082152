"""Map fidelity on held-out subjects: does the edited head follow the painted map? (``perchead eval-edit``)

For each studio subject of the split, its most frontal view's exact map (from ``perchead synth``) and its own
matted image as the style give the *unedited* head; :func:`perchead.edit.fidelity.controlled_edits` give the
edited maps. Each method (``network``: the editing network's Gaussians; ``fitted``: after
:func:`perchead.edit.fit.fit_to_map`, what ``perchead edit`` writes) is measured from the map's camera:

* silhouette IoU and per-group IoU of the rendered labels against the map (labels from the *unedited* map on
  the unedited head's Gaussians, kept index by index by the edited head: see :mod:`perchead.edit.fidelity`);
* for each edit, the change of the rendered area of the edited group against the painted change;
* holes: from the profiles (yaw +-90) and the back (yaw 180), the edited head's mean alpha over the pixels
  that the unedited head covers (alpha > 0.5) outside the edited region, relative to the unedited head's. The
  edited region of a side view is what lies in the prism of the repainted pixels (seen from the map's camera)
  or is drawn with the edited group's label, the labels taken from all the subject's exact maps (so long hair
  behind the neck, which the front map cannot see, is hair); a view where that leaves under 2% of the drawn
  pixels is not counted; see :func:`side_alpha_ratios`. Also reported:
  the measure with the front map's labels only and no prism (``side_alpha_ratio_by_label``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from perchead.data.format import SEG, SubjectRecord, load_view
from perchead.geometry import HEAD_CAMERA_RADIUS, Gaussians, orbit_viewmats, project_points, unproject_depth
from perchead.render import rasterize

from .fidelity import (
    CLASS_GROUPS,
    class_area,
    controlled_edits,
    gaussian_labels,
    map_fidelity,
    render_labels,
    resize_map,
)
from .fit import SIDE_YAWS, MapFitConfig, fit_to_map, scale_K
from .network import EditNetwork

MIN_SIDE_FRACTION = 0.02
"""a side view counts in the hole check when this share of its drawn pixels lies outside the edited region"""


@dataclass
class MapEvalConfig:
    subjects: int = 8
    """first N studio subjects of the split measured (each: 1 + 4 edits x (network + fit))"""
    grow_px: int = 20
    shrink_px: int = 6
    hole_margin_px: int = 2
    """the repainted pixels are grown by this much before the side views' edited region is taken from them"""
    disentangle_subjects: int = 4
    """first N subjects whose maps and styles are swapped pairwise through the fit (2 fits per ordered pair)"""
    fit: MapFitConfig = field(default_factory=MapFitConfig)


def frontal_view(subject: SubjectRecord) -> int:
    """Index of the subject's view closest to frontal (the map a user would paint)."""
    from perchead.eval.protocol import views_from_cameras

    views = views_from_cameras([v.name for v in subject.views], torch.stack([v.world_to_cam for v in subject.views]))
    return min(range(len(views)), key=lambda j: abs(views[j].yaw_deg) + abs(views[j].pitch_deg))


def map_input(net: EditNetwork, subject: SubjectRecord) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The frontal view's map at the network's input size, its matted image's style, and the view's camera
    (viewmat, K at that size)."""
    view = subject.views[frontal_view(subject)]
    lv = load_view(view)
    s = net.config.image_size
    style = net.style_from_image((lv.image * lv.mask + (1 - lv.mask))[None], lv.mask[None])
    return resize_map(lv.segmentation, s), style, view.world_to_cam, scale_K(view.K, s / lv.segmentation.shape[-1])


def edited_columns(unedited_map: Tensor, edited_map: Tensor, margin_px: int) -> Tensor:
    """Pixels [S, S] of the map that the edit repainted, grown by ``margin_px`` (the soft edge of a splat
    silhouette)."""
    changed = (unedited_map != edited_map).float()[None, None]
    if margin_px > 0:
        changed = torch.nn.functional.max_pool2d(changed, 2 * margin_px + 1, stride=1, padding=margin_px)
    return changed[0, 0] > 0


def side_alpha_ratios(edited: Gaussians, unedited: Gaussians, labels: Tensor, group: str, changed: Tensor,
                      vm: Tensor, K: Tensor, size: int, backend: str,
                      front_labels: Tensor | None = None, min_fraction: float = MIN_SIDE_FRACTION) -> dict[str, float]:
    """Worst over :data:`SIDE_YAWS` of edited / unedited mean alpha over the pixels the unedited head draws
    (alpha > 0.5) outside the edited region. A view counts only where at least ``min_fraction`` of the pixels
    the unedited head draws there lie outside the edited region (the back of a head whose hair is removed is
    nearly all edited region: a mean over a handful of pixels at its rim is no measure of holes).

    The edited region of a side view, two ways: ``by_region`` (the measure), the pixels whose rendered label
    (from ``labels``) is the edited group or whose surface point (the unedited head's expected depth) projects
    into the repainted pixels ``changed`` of the map's camera ``(vm, K)``; ``by_label``, only the pixels whose
    label from ``front_labels`` (default ``labels``) is the edited group. Painting background over a region of
    the map empties every ray through it, so the head seen from the side loses what lies in that prism
    whatever its label; ``by_region`` is what a user asked to change, ``by_label`` ignores the prism."""
    vms = orbit_viewmats(list(SIDE_YAWS), [0.0] * len(SIDE_YAWS), HEAD_CAMERA_RADIUS).to(edited.means)
    Ks = K.to(edited.means).expand(len(vms), 3, 3)
    a1 = rasterize(edited, vms, Ks, size, size, backend=backend).alpha[..., 0]
    depth0 = rasterize(unedited, vms, Ks, size, size, backend=backend).depth[..., 0]
    ids = torch.tensor([SEG[n] for n in CLASS_GROUPS[group]])
    changed = changed.to(edited.means.device)
    worst = {"by_label": 1.0, "by_region": 1.0}
    for c in range(len(vms)):
        lab, a0 = render_labels(unedited, labels, vms[c], Ks[c], size, backend)
        front = lab if front_labels is None else render_labels(unedited, front_labels, vms[c], Ks[c], size,
                                                               backend)[0]
        pts = unproject_depth(depth0[c], vms[c], Ks[c]).reshape(-1, 3)
        pix, _ = project_points(pts, vm.to(pts)[None], K.to(pts)[None])
        u, v = pix[0, :, 0].floor().long(), pix[0, :, 1].floor().long()
        inside = (u >= 0) & (u < changed.shape[1]) & (v >= 0) & (v < changed.shape[0])
        in_prism = torch.zeros_like(inside)
        in_prism[inside] = changed[v[inside], u[inside]]
        drawn = a0 > 0.5
        keeps = {"by_label": drawn & ~torch.isin(front, ids.to(front.device)),
                 "by_region": drawn & ~torch.isin(lab, ids.to(lab.device)) & ~in_prism.reshape(size, size)}
        for name, keep in keeps.items():
            if keep.sum() >= max(1, min_fraction * drawn.sum()):
                worst[name] = min(worst[name], float(a1[c][keep].mean() / a0[keep].mean()))
    return worst


@torch.no_grad()
def evaluate_map_fidelity(net: EditNetwork, subjects: Sequence[SubjectRecord], config: MapEvalConfig | None = None,
                          backend: str = "auto", progress: bool = False,
                          figure_cells: list | None = None) -> dict[str, Any]:
    """Rows (one per subject x map x method) and means; see the module docstring. ``figure_cells``: when a
    list, the first subject's maps and renders (front, profile, back per method) are appended to it as
    (image [H, W, 3], label) pairs."""
    cfg = config or MapEvalConfig()
    anchors, s_max = net.template.points()[0], float(net.heads.s_max_m)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for n, subject in enumerate(subjects[: cfg.subjects]):
        seg, style, vm, K = map_input(net, subject)
        size = seg.shape[-1]
        maps = {"unedited": (seg.numpy(), None), **controlled_edits(seg.numpy(), cfg.grow_px, cfg.shrink_px)}
        heads: dict[tuple[str, str], tuple[Gaussians, Tensor]] = {}
        labels = None
        # labels for the hole check: the unedited head's Gaussians seen in every exact map of the subject
        all_maps = [(lv.segmentation, v.world_to_cam, v.K) for v in subject.views for lv in (load_view(v),)]
        labels_3d: dict[str, Tensor] = {}
        for name, (m, group) in maps.items():
            mt = torch.from_numpy(np.asarray(m)).long()
            g = net.generate(mt[None], style)[0]
            if labels is None:  # the unedited head: its Gaussians take the unedited map's labels
                labels = gaussian_labels(g, mt, vm, K, backend)
            fitted = fit_to_map(g, labels, mt, vm, K, cfg.fit, anchors, s_max, backend)
            heads[name, "network"] = (g, labels)
            heads[name, "fitted"] = (fitted.gaussians, fitted.labels)
            for method in ("network", "fitted"):
                gm, lm = heads[name, method]
                rendered, alpha = render_labels(gm, lm, vm, K, size, backend)
                fid = map_fidelity(rendered, alpha, mt)
                row = {"subject": subject.id, "map": name, "method": method, "silhouette_iou": fid["silhouette_iou"],
                       **{f"iou_{k}": v for k, v in fid["iou"].items()},
                       **{f"area_{k}": v for k, v in fid["area_rendered"].items()},
                       **{f"map_area_{k}": v for k, v in fid["area_map"].items()}}
                if group is not None:
                    base = next(r for r in rows if r["subject"] == subject.id and r["map"] == "unedited"
                                and r["method"] == method)
                    row["group"] = group
                    row["painted_change"] = class_area(mt, group) - class_area(seg, group)
                    row["rendered_change"] = row[f"area_{group}"] - base[f"area_{group}"]
                    row["rendered_area_before"] = base[f"area_{group}"]
                    g0, l0 = heads["unedited", method]
                    if method not in labels_3d:
                        labels_3d[method] = gaussian_labels(g0, seg, vm, K, backend, all_maps)
                    changed = edited_columns(seg, mt, cfg.hole_margin_px)
                    holes = side_alpha_ratios(gm, g0, labels_3d[method], group, changed, vm, K, size, backend,
                                              front_labels=l0)
                    row["side_alpha_ratio"] = holes["by_region"]
                    row["side_alpha_ratio_by_label"] = holes["by_label"]
                if method == "fitted":
                    row["fit_seconds"] = round(fitted.seconds, 2)
                rows.append(row)
            if figure_cells is not None and n == 0:
                _figure_cells(figure_cells, name, m, heads, K, size, backend)
        if progress:
            print(f"eval-edit map fidelity: {n + 1}/{min(cfg.subjects, len(subjects))} subjects "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"rows": rows, "summary": summarise_fidelity(rows), "config": {
        "subjects": min(cfg.subjects, len(subjects)), "grow_px": cfg.grow_px, "shrink_px": cfg.shrink_px,
        "side_yaws": list(SIDE_YAWS)}, "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def fitted_disentanglement(net: EditNetwork, subjects: Sequence[SubjectRecord], k: int, config: MapFitConfig,
                           backend: str = "auto") -> dict[str, Any]:
    """:func:`perchead.edit.evaluate.disentanglement` through the map fit: over all ordered pairs of the
    first ``k`` subjects' frontal views, the mean displacement (metres) of the *fitted* Gaussians (children
    correspond index by index) and mean |RGB| change under a style swap vs a map swap. Each head is fitted to
    the map it was made from, seen from that map's camera, with labels from that map."""
    anchors, s_max = net.template.points()[0], float(net.heads.s_max_m)
    inputs = []
    for subject in subjects[:k]:
        inputs.append(map_input(net, subject))
    if len(inputs) < 2:
        return {"evaluated": False, "why": "fewer than two subjects"}

    def head(seg: Tensor, style: Tensor, vm: Tensor, K: Tensor) -> Gaussians:
        g = net.generate(seg[None], style)[0]
        return fit_to_map(g, gaussian_labels(g, seg, vm, K, backend), seg, vm, K, config, anchors, s_max,
                          backend).gaussians

    base = [head(*x) for x in inputs]
    sums = {"style_swap": [0.0, 0.0], "map_swap": [0.0, 0.0]}
    for i, (seg, style, vm, K) in enumerate(inputs):
        for j, other in enumerate(inputs):
            if j == i:
                continue
            swaps = {"style_swap": head(seg, other[1], vm, K), "map_swap": head(other[0], style, other[2], other[3])}
            for name, g in swaps.items():
                sums[name][0] += float((g.means - base[i].means).norm(dim=-1).mean())
                sums[name][1] += float((g.rgb - base[i].rgb).abs().mean())
    pairs = len(inputs) * (len(inputs) - 1)
    out: dict[str, Any] = {"subjects": len(inputs), "ordered_pairs": pairs}
    for name, (position, colour) in sums.items():
        out[name] = {"position_m": position / pairs, "rgb": colour / pairs}
    out["position_ratio_map_over_style"] = out["map_swap"]["position_m"] / max(out["style_swap"]["position_m"], 1e-12)
    out["rgb_ratio_style_over_map"] = out["style_swap"]["rgb"] / max(out["map_swap"]["rgb"], 1e-12)
    return out


def _figure_cells(cells: list, name: str, m: np.ndarray, heads: dict, K: Tensor, size: int, backend: str) -> None:
    from .segmentation import colorize

    vms = orbit_viewmats([0.0, 90.0, 180.0], [0.0] * 3, HEAD_CAMERA_RADIUS)
    cells.append((torch.from_numpy(colorize(m)).float() / 255, f"map: {name}"))
    for method in ("network", "fitted"):
        g = heads[name, method][0]
        out = rasterize(g, vms.to(g.means), K.to(g.means).expand(3, 3, 3), size, size, backend=backend).rgb
        cells += [(out[i].clamp(0, 1), f"{method} {label}") for i, label in enumerate(("front", "profile", "back"))]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return None if not vals else float(sum(vals) / len(vals))


def summarise_fidelity(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per (map, method): IoUs; for edits, rendered / painted area change and the worst side alpha ratio."""
    out = []
    for key in dict.fromkeys((r["map"], r["method"]) for r in rows):
        sel = [r for r in rows if (r["map"], r["method"]) == key]
        s: dict[str, Any] = {"map": key[0], "method": key[1], "subjects": len(sel),
                             "silhouette_iou": _mean([r["silhouette_iou"] for r in sel])}
        for g in CLASS_GROUPS:
            s[f"iou_{g}"] = _mean([r[f"iou_{g}"] for r in sel])
        if "group" in sel[0]:
            s["group"] = sel[0]["group"]
            s["painted_change"] = _mean([r["painted_change"] for r in sel])
            s["rendered_change"] = _mean([r["rendered_change"] for r in sel])
            # per subject: how much of the painted change the render follows (removal: of the area before)
            s["followed"] = _mean([r["rendered_change"] / r["painted_change"] for r in sel if r["painted_change"]])
            s["side_alpha_ratio_min"] = min(r["side_alpha_ratio"] for r in sel)
            s["side_alpha_ratio_by_label_min"] = min(r["side_alpha_ratio_by_label"] for r in sel)
        if key[1] == "fitted":
            s["fit_seconds"] = _mean([r.get("fit_seconds") for r in sel])
        out.append(s)
    return out


def format_fidelity(result: dict[str, Any]) -> list[str]:
    """Markdown tables of :func:`summarise_fidelity`."""
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    groups = list(CLASS_GROUPS)
    lines = ["| map | method | silhouette IoU | " + " | ".join(f"{g} IoU" for g in groups) + " |",
             "|---|---|---:|" + "---:|" * len(groups)]
    for s in result["summary"]:
        lines.append(f"| {s['map']} | {s['method']} | {f(s['silhouette_iou'])} | "
                     + " | ".join(f(s[f'iou_{g}']) for g in groups) + " |")
    lines += ["", "| edit | method | painted change (px) | rendered change (px) | followed | worst side alpha ratio "
                  "| (front map labels, no prism) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s in result["summary"]:
        if "group" in s:
            lines.append(f"| {s['map']} ({s['group']}) | {s['method']} | {f(s['painted_change'], 0)} | "
                         f"{f(s['rendered_change'], 0)} | {f(s['followed'], 2)} | {f(s['side_alpha_ratio_min'])} | "
                         f"{f(s['side_alpha_ratio_by_label_min'])} |")
    return lines


__all__ = ["MapEvalConfig", "SIDE_YAWS", "edited_columns", "evaluate_map_fidelity", "fitted_disentanglement",
           "format_fidelity", "frontal_view", "side_alpha_ratios", "summarise_fidelity"]

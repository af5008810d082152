"""``perchead eval``: any number of checkpoints plus the mean-colour template on a dataset's held-out subjects.

    perchead eval --checkpoint perchead=runs/a/checkpoints/step_00000800 \\
                  --checkpoint lifting=runs/b/checkpoints/step_00000800 --data data/synth --out eval/

Every metric of :mod:`perchead.eval.metrics` that works here is computed (the others print why and stay
empty columns). Written to ``--out``:

* ``rows.csv`` -- one row per (subject, pair, target, method): views, yaw/pitch, every metric;
* ``subjects.csv`` -- per (method, views, subject) means; ``summary.csv`` -- per (method, views) means over
  target images, with the standard deviation over the subjects' means (``*_sd``);
* ``summary.json`` -- the same summary plus everything needed to reproduce it (command, checkpoints, metric
  settings, unavailable metrics and why, faces not found, protocol, machine);
* ``results.md`` -- the tables, beside the paper's numbers (labelled as the paper's, on its own data);
* ``yaw_buckets.png`` -- heatmaps of mean PSNR and SSIM per (input |yaw| bucket x target |yaw| bucket), one
  row per method, so a reader sees where each method breaks; its data in ``yaw_buckets.csv`` and as tables
  in ``results.md``;
* ``metric_vs_yaw.png`` -- PSNR and SSIM against the target view's yaw, per method (novel views as lines,
  opposite-profile pairs as diamonds); its data in ``metric_vs_yaw.csv``;
* ``best_worst.png`` -- the best and worst subjects of the first checkpoint (by novel-view PSNR): input,
  target and every method, for the novel target farthest from the input, an extreme (profile) target and an
  opposite-profile pair.

A checkpoint's name is given as ``NAME=PATH``, with ``--name``, or taken from its folder (a ``step_XXXXXXXX``
folder of a training run is named after the run). Each checkpoint gives a method ``NAME`` (rasterized
Gaussians) and, when its SHP-CNN is trained (``--shp auto``) or always (``--shp both``), ``NAME_sharpened``.
"""

from __future__ import annotations

import csv
import inspect
import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from perchead.inference.fit import FitConfig
from perchead.io.atomic import atomic_output, atomic_write_json, atomic_write_text
from perchead.model import PercHead

from .harness import (
    BASELINE,
    Case,
    EvalConfig,
    EvalRun,
    FittedMethod,
    MeanColourTemplate,
    Method,
    ModelMethod,
    evaluate,
    finite_mean,
    iter_groups,
    shp_is_identity,
)
from .heldout import machine
from .metrics import METRICS, MetricConfig, MetricSuite
from .protocol import GROUPS, describe_protocol

# Column titles, with the direction in which a metric is better.
METRIC_LABELS = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "dreamsim": "DreamSim ↓",
                 "id_arcface": "ID ArcFace ↓", "id_dlib": "ID dlib ↓"}
# The paper's PercHead results (docs/design.md section 2): Ava-256, 11 unseen captures, 512 px crops, white
# background. On its own data: not comparable with any other dataset's numbers. Its extreme views are
# profiles of a (near-)frontal input: the "extreme" group here (not opposite_profile).
PAPER_RESULTS = {"novel": {"psnr": 16.4, "ssim": 0.691, "lpips": 0.269, "dreamsim": 0.092, "id_arcface": 0.292},
                 "extreme": {"psnr": 15.9, "ssim": 0.678, "lpips": 0.291, "dreamsim": 0.106, "id_arcface": 0.282}}
PAPER_LABEL = "*paper: PercHead on Ava-256 (not comparable)*"


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def metric_columns(summary: Sequence[dict[str, Any]], unavailable: dict[str, str] | None = None) -> list[str]:
    """The metric names of a summary, in ``METRICS`` order, that have at least one value (not unavailable,
    not all NaN / None)."""
    def measured(m: str) -> bool:
        return any(isinstance(s.get(m), int | float) and math.isfinite(s[m]) for s in summary)

    return [m for m in METRICS if m not in (unavailable or {}) and measured(m)]


# -- checkpoints ------------------------------------------------------------------------------------------------
def checkpoint_name(path: str) -> str:
    """A checkpoint's default name: its folder, or its run's folder for ``<run>/checkpoints/step_XXXXXXXX``."""
    p = Path(path.rstrip("/"))
    if p.name.startswith("step_") and p.parent.name == "checkpoints":
        return p.parent.parent.name
    return p.name or path


def parse_checkpoints(checkpoints: Sequence[str], names: Sequence[str] = ()) -> dict[str, str]:
    """``NAME=PATH`` / ``PATH`` entries (+ optional ``--name`` list) -> {name: path}, names unique."""
    if names and len(names) != len(checkpoints):
        raise ValueError(f"{len(names)} --name value(s) for {len(checkpoints)} --checkpoint(s): give one name per "
                         "checkpoint, or none")
    out: dict[str, str] = {}
    for i, entry in enumerate(checkpoints):
        name, sep, path = entry.partition("=")
        if not sep or Path(entry).exists():
            name, path = checkpoint_name(entry), entry
        if names:
            name = names[i]
        if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"checkpoint name {name!r} must be letters, digits, '_', '-' or '.'")
        if name in out or name == BASELINE:
            raise ValueError(f"two methods are called {name!r}: name the checkpoints (NAME=PATH or --name)")
        out[name] = path
    return out


# -- aggregation ------------------------------------------------------------------------------------------------
def aggregate(rows: Sequence[dict[str, Any]], metrics: Sequence[str],
              methods: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per subject, summary): for each method and view group (:func:`iter_groups`: novel, extreme,
    extreme_back, opposite_profile, each opposite-profile direction), the
    mean of every metric over the finite values of the target images, and per subject; the summary also has
    ``<metric>_sd``, the standard deviation of the subjects' means, and ``<metric>_n`` (finite values)."""
    per_subject, summary = [], []
    for method in methods:
        for group in iter_groups(rows):
            sel = [r for r in rows if r["method"] == method and (r["group"] == group or r["setting"] == group)]
            if not sel:
                continue
            subjects = sorted({r["subject"] for r in sel})
            subject_means: dict[str, list[float]] = {m: [] for m in metrics}
            for subject in subjects:
                mine = [r for r in sel if r["subject"] == subject]
                entry = {"method": method, "group": group, "subject": subject, "images": len(mine)}
                for m in metrics:
                    entry[m] = finite_mean([r[m] for r in mine])
                    subject_means[m].append(entry[m])
                per_subject.append(entry)
            entry = {"method": method, "group": group, "images": len(sel), "subjects": len(subjects)}
            for m in metrics:
                values = [r[m] for r in sel]
                entry[m] = finite_mean(values)
                entry[f"{m}_n"] = sum(1 for v in values if math.isfinite(v))
                entry[f"{m}_sd"] = _sd([v for v in subject_means[m] if math.isfinite(v)])
            summary.append(entry)
    return per_subject, summary


def _sd(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Rows to CSV; NaN (unavailable or not measured) is an empty cell."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with atomic_output(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return path


# -- markdown ---------------------------------------------------------------------------------------------------
def _cell(value: float | None, sd: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    digits = 2 if abs(value) >= 10 else 3
    text = f"{value:.{digits}f}"
    return text if sd is None or not math.isfinite(sd) else f"{text} ± {sd:.{digits}f}"


def results_table(summary: Sequence[dict[str, Any]], metrics: Sequence[str], methods: Sequence[str],
                  groups: Sequence[str] = GROUPS, paper: bool = True) -> str:
    """Markdown: one row per (views, method) with every metric as mean ± sd over subjects, then the paper's
    row of each views group (where it has the metric)."""
    lines = ["| views | method | images | subjects | " + " | ".join(metric_label(m) for m in metrics) + " |",
             "|---|---|---:|---:|" + "---:|" * len(metrics)]
    value = {(s["method"], s["group"]): s for s in summary}
    for group in groups:
        for method in methods:
            s = value.get((method, group))
            if s is None:
                continue
            cells = [_cell(s[m], s.get(f"{m}_sd")) for m in metrics]
            lines.append(f"| {group} | `{method}` | {s['images']} | {s['subjects']} | " + " | ".join(cells) + " |")
        if paper and group in PAPER_RESULTS:
            cells = [_cell(PAPER_RESULTS[group].get(m)) for m in metrics]
            lines.append(f"| {group} | {PAPER_LABEL} | | 11 | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drop_table(summary: Sequence[dict[str, Any]], metrics: Sequence[str], methods: Sequence[str]) -> str:
    """Markdown: extreme minus novel per method and metric (how much each method loses at the profiles of
    a frontal input), beside the paper's difference."""
    lines = ["| method | " + " | ".join(f"Δ {metric_label(m)}" for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    value = {(s["method"], s["group"]): s for s in summary}
    for method in methods:
        a, b = value.get((method, "novel")), value.get((method, "extreme"))
        if a is None or b is None:
            continue
        lines.append(f"| `{method}` | " + " | ".join(_signed(b[m] - a[m]) for m in metrics) + " |")
    paper = [_signed(PAPER_RESULTS["extreme"][m] - PAPER_RESULTS["novel"][m]) if m in PAPER_RESULTS["novel"] else ""
             for m in metrics]
    lines.append(f"| {PAPER_LABEL} | " + " | ".join(paper) + " |")
    return "\n".join(lines)


def paired_table(per_subject: Sequence[dict[str, Any]], methods: Sequence[str], metric: str = "psnr") -> str:
    """Markdown: every other method against the first, subject by subject (the subjects both have): mean
    difference of the subjects' means and on how many subjects it is better, for each group of ``GROUPS``
    that has values."""
    value = {(s["method"], s["group"], s["subject"]): s.get(metric) for s in per_subject}
    ref = methods[0]
    higher = not METRIC_LABELS.get(metric, "↑").endswith("↓")
    groups = [g for g in GROUPS if any(k[1] == g for k in value)]
    lines = [f"| method vs `{ref}` | " + " | ".join(f"{g} Δ {metric_label(metric)} | better on" for g in groups)
             + " |", "|---|" + "---:|---:|" * len(groups)]
    for method in methods[1:]:
        cells = []
        for group in groups:
            diffs = []
            for (m, g, subject), v in value.items():
                r = value.get((ref, g, subject))
                if m == method and g == group and _finite(v) and _finite(r):
                    diffs.append(v - r)
            if not diffs:
                cells += ["", ""]
                continue
            better = sum(1 for d in diffs if (d > 0) == higher and d != 0)
            cells += [_signed(sum(diffs) / len(diffs)), f"{better}/{len(diffs)} subjects"]
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _signed(v: float) -> str:
    return "" if not math.isfinite(v) else (f"{v:+.2f}" if abs(v) >= 1 else f"{v:+.3f}")


def results_markdown(summary: Sequence[dict[str, Any]], per_subject: Sequence[dict[str, Any]], info: dict[str, Any],
                     metrics: Sequence[str], methods: Sequence[str], figures: dict[str, str],
                     buckets: Sequence[dict[str, Any]] = (), bucket_deg: float = 30.0) -> str:
    directions = [g for g in dict.fromkeys(s["group"] for s in summary) if g not in GROUPS]
    parts = [
        f"# Evaluation on `{info['data']}` (split `{info['split']}`, {len(info['subjects'])} multi-view subjects)",
        f"Command: `{info['command']}`",
        f"{info['seconds']:.0f} s on {info['machine']}. Images compared at {info['size']} px on white; means over "
        "target images, ± the standard deviation over the subjects' means.",
        "## Methods\n\n" + "\n".join(f"- `{name}`: {desc}" for name, desc in info["methods"].items()),
        "## Results\n\n" + results_table(summary, metrics, methods),
        "Views: **novel** = the view closest to frontal as input, every other view (or a spread subset) as "
        "target; **extreme** (the paper's extreme views) = the same frontal input, the horizontal profiles as "
        "targets; **extreme_back** = the same input, the back views; **opposite_profile** = one profile as input, "
        "the other profile as target (and above -> below where the rig has such views): on a left-right "
        "symmetric head a mirrored input is the target, so this row rewards mirroring. The exact rules are "
        "under Protocol.",
        "The paper's rows are PercHead's published numbers on Ava-256 (11 unseen captures, 512 px, real "
        "captures; docs/design.md section 2), shown for scale only: a different dataset, resolution and model size, "
        "so **not comparable** with the rows above. Its identity column is ArcFace.",
        "## Extreme minus novel views\n\n" + drop_table(summary, metrics, methods),
    ]
    if len(methods) > 1 and "psnr" in metrics:
        parts.append("## Subject by subject\n\nEach method's per-subject mean PSNR minus the first method's, "
                     "averaged over subjects, and on how many subjects it is higher.\n\n"
                     + paired_table(per_subject, methods))
    if directions:
        parts.append("## Opposite profiles by direction\n\n"
                     + results_table(summary, metrics, methods, groups=directions, paper=False))
    if buckets:
        tables = "\n\n".join(f"{metric_label(m)}:\n\n" + bucket_table(buckets, methods, m, bucket_deg)
                               for m in ("psnr", "ssim") if m in metrics)
        parts.append("## By input and target yaw\n\nMean per (input |yaw|, target |yaw|) bucket over the targets "
                     "of every task (a pair scored by two tasks counts once), images in brackets; columns are "
                     "the target's |yaw| (data: yaw_buckets.csv, figure: yaw_buckets.png).\n\n" + tables)
    notes = []
    for name, reason in info["unavailable"].items():
        notes.append(f"- `{name}` not measured (empty column): {reason}")
    for name, counts in info["faces_not_found"].items():
        notes.append(f"- `{name}`: no face found in {counts['pred']} prediction(s) and {counts['target']} "
                     f"target(s); {counts['pairs']} pair(s) not scored (left out of the means)")
    for group, ids in info["subjects_without_pairs"].items():
        if ids:
            notes.append(f"- {len(ids)} subject(s) have no {group} target: {', '.join(ids[:10])}")
    if notes:
        parts.append("## Notes\n\n" + "\n".join(notes))
    parts.append("## Protocol\n\n" + "\n".join(f"- {k}: {v}" for k, v in info["protocol"].items()))
    for title, file in figures.items():
        parts.append(f"## {title}\n\n![{title}]({file})")
    return "\n\n".join(parts) + "\n"


# -- figures ----------------------------------------------------------------------------------------------------
def yaw_bins(rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str] = ("psnr", "ssim"),
             bin_deg: float = 30.0) -> list[dict[str, Any]]:
    """Per (method, views group, target-yaw bin): images and the mean of each metric (finite values), bins of
    ``bin_deg`` centred on its multiples (the back, +-180, is one bin, listed as 180). The figure's data.
    Groups: novel (a frontal input; the extreme task's targets are among them, from the same input) and
    opposite_profile (a profile input)."""
    n_bins = max(1, round(360.0 / bin_deg))
    width = 360.0 / n_bins

    def centre(yaw: float) -> float:
        k = math.floor((yaw + 180.0 + width / 2) / width) % n_bins
        c = -180.0 + k * width
        return round(c if c > -180.0 + 1e-9 else 180.0, 3)

    out = []
    for method in methods:
        for group in ("novel", "opposite_profile"):
            bins: dict[float, list[dict[str, Any]]] = {}
            for r in rows:
                if r["method"] == method and r["group"] == group:
                    bins.setdefault(centre(r["target_yaw_deg"]), []).append(r)
            for c in sorted(bins):
                entry = {"method": method, "group": group, "target_yaw_bin_deg": c, "images": len(bins[c])}
                entry.update({m: finite_mean([r[m] for r in bins[c]]) for m in metrics})
                out.append(entry)
    return out


def plot_metric_vs_yaw(bins: Sequence[dict[str, Any]], methods: Sequence[str], path: Path,
                       metrics: Sequence[str] = ("psnr", "ssim"), bin_deg: float = 30.0) -> Path | None:
    """Per method: the :func:`yaw_bins` means, novel views as a line, opposite-profile pairs as diamonds at
    their target's bin. Returns None (with a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("perchead eval: the yaw figure needs matplotlib (`pip install matplotlib`); skipped", flush=True)
        return None
    metrics = [m for m in metrics if any(_finite(b.get(m)) for b in bins)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.0), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, method in enumerate(methods):
            colour = colours[i % len(colours)]
            for group, style in (("novel", dict(marker="o", ms=3, lw=1.5)),
                                 ("opposite_profile", dict(marker="D", ms=8, lw=0, mfc="none", mew=1.5))):
                mine = [b for b in bins if b["method"] == method and b["group"] == group and _finite(b[metric])]
                if not mine:
                    continue
                xs = [b["target_yaw_bin_deg"] for b in mine]
                ys = [b[metric] for b in mine]
                if group == "novel" and xs[-1] == 180.0:  # the back bin closes the circle on both ends
                    xs, ys = [-180.0, *xs], [ys[-1], *ys]
                ax.plot(xs, ys, color=colour, label=method if group == "novel" else None, **style)
        ax.set_xlabel("target yaw (degrees; 0 = front, ±180 = back)")
        ax.set_ylabel(metric_label(metric))
        ax.set_xticks(range(-180, 181, 60))
        ax.grid(alpha=0.3)
    axes[0][0].plot([], [], "kD", mfc="none", label="opposite_profile pair (input: the other profile)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"novel views (lines, input near frontal) and opposite-profile pairs (diamonds); {bin_deg:g}° bins")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bucket_edges(bucket_deg: float = 30.0) -> list[tuple[float, float]]:
    """|yaw| buckets [lo, hi) covering 0-180 degrees (the last one closed: 180 belongs to it)."""
    if not 0.0 < bucket_deg <= 180.0:
        raise ValueError(f"bucket_deg must be in (0, 180], got {bucket_deg}")
    n = max(1, math.ceil(180.0 / bucket_deg - 1e-9))
    return [(k * bucket_deg, min(180.0, (k + 1) * bucket_deg)) for k in range(n)]


def bucket_label(edge: tuple[float, float]) -> str:
    return f"{edge[0]:g}-{edge[1]:g}"


def _bucket(yaw: float, edges: Sequence[tuple[float, float]]) -> int:
    a = abs(float(yaw))
    return next((k for k, (_, hi) in enumerate(edges) if a < hi), len(edges) - 1)


def yaw_buckets(rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str] = ("psnr", "ssim"),
                bucket_deg: float = 30.0) -> list[dict[str, Any]]:
    """Per (method, input |yaw| bucket, target |yaw| bucket): images and the mean of each metric (finite
    values), over the rows of every task. An (input view, target view) pair scored by several tasks (the
    extreme task's targets are novel targets of the same input) counts once: the first row of each
    (subject, input, target, method) is kept. Buckets: :func:`bucket_edges`; only cells with images."""
    edges = bucket_edges(bucket_deg)
    seen: set[tuple[Any, ...]] = set()
    cells: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["subject"], r["input"], r["target"], r["method"])
        if r["method"] not in methods or key in seen:
            continue
        seen.add(key)
        cell = (r["method"], _bucket(r["input_yaw_deg"], edges), _bucket(r["target_yaw_deg"], edges))
        cells.setdefault(cell, []).append(r)
    out = []
    for method in methods:
        for i in range(len(edges)):
            for t in range(len(edges)):
                mine = cells.get((method, i, t))
                if not mine:
                    continue
                entry = {"method": method, "input_abs_yaw": bucket_label(edges[i]),
                         "target_abs_yaw": bucket_label(edges[t]), "images": len(mine),
                         "subjects": len({r["subject"] for r in mine})}
                entry.update({m: finite_mean([r[m] for r in mine]) for m in metrics})
                out.append(entry)
    return out


def bucket_table(buckets: Sequence[dict[str, Any]], methods: Sequence[str], metric: str,
                 bucket_deg: float = 30.0) -> str:
    """Markdown: one row per (method, input |yaw| bucket that has images), one column per target |yaw|
    bucket; a cell is the mean of ``metric`` and, in brackets, its number of images (empty: no images)."""
    labels = [bucket_label(e) for e in bucket_edges(bucket_deg)]
    value = {(b["method"], b["input_abs_yaw"], b["target_abs_yaw"]): b for b in buckets}
    lines = ["| method | input \\|yaw\\| | " + " | ".join(f"→ {lab}" for lab in labels) + " |",
             "|---|---|" + "---:|" * len(labels)]
    for method in methods:
        for inp in labels:
            if not any((method, inp, t) in value for t in labels):
                continue
            cells = []
            for t in labels:
                b = value.get((method, inp, t))
                cells.append("" if b is None or not _finite(b.get(metric)) else f"{_cell(b[metric])} ({b['images']})")
            lines.append(f"| `{method}` | {inp} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_yaw_buckets(buckets: Sequence[dict[str, Any]], methods: Sequence[str], path: Path,
                     metrics: Sequence[str] = ("psnr", "ssim"), bucket_deg: float = 30.0) -> Path | None:
    """Heatmaps of :func:`yaw_buckets`: one row per method, one column per metric, input |yaw| bucket down,
    target |yaw| bucket across, the mean and the number of images in each cell; one colour scale per metric
    (shared by the methods, so cells compare across rows). Returns None (with a message) without matplotlib
    or without values."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        print("perchead eval: the yaw-bucket figure needs matplotlib (`pip install matplotlib`); skipped", flush=True)
        return None
    metrics = [m for m in metrics if any(_finite(b.get(m)) for b in buckets)]
    methods = [m for m in methods if any(b["method"] == m for b in buckets)]
    if not metrics or not methods:
        return None
    labels = [bucket_label(e) for e in bucket_edges(bucket_deg)]
    index = {lab: k for k, lab in enumerate(labels)}
    fig, axes = plt.subplots(len(methods), len(metrics), figsize=(4.6 * len(metrics), 3.6 * len(methods)),
                             squeeze=False)
    for col, metric in enumerate(metrics):
        values = [b[metric] for b in buckets if _finite(b.get(metric))]
        lo, hi = min(values), max(values)
        # Higher is better for PSNR/SSIM, lower for the distances: the colour map's bright end is always "good".
        cmap = "viridis" if not metric_label(metric).endswith("↓") else "viridis_r"
        for row, method in enumerate(methods):
            ax = axes[row][col]
            grid = np.full((len(labels), len(labels)), np.nan)
            count = np.zeros((len(labels), len(labels)), dtype=int)
            for b in buckets:
                if b["method"] == method and _finite(b.get(metric)):
                    i, t = index[b["input_abs_yaw"]], index[b["target_abs_yaw"]]
                    grid[i, t], count[i, t] = b[metric], b["images"]
            im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-6,
                           origin="lower", aspect="auto")
            ax.set_facecolor("#e6e6e6")  # no images in the cell
            for i in range(len(labels)):
                for t in range(len(labels)):
                    if np.isfinite(grid[i, t]):
                        shade = (grid[i, t] - lo) / (hi - lo) if hi > lo else 0.5
                        if cmap.endswith("_r"):
                            shade = 1 - shade
                        ax.text(t, i, f"{_cell(float(grid[i, t]))}\n({count[i, t]})", ha="center", va="center",
                                fontsize=7, color="black" if shade > 0.6 else "white")
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel("target |yaw| (degrees)")
            ax.set_ylabel("input |yaw| (degrees)")
            ax.set_title(f"{method[:28]}: {metric_label(metric)}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("mean per (input |yaw|, target |yaw|) bucket over every task's targets; (n) = images", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rank_subjects(per_subject: Sequence[dict[str, Any]], method: str, n: int) -> tuple[list[str], list[str]]:
    """(best, worst) subjects of ``method`` by mean novel-view PSNR, ``n`` each (fewer when there are not
    enough subjects; a subject is never both)."""
    scored = [(s["psnr"], s["subject"]) for s in per_subject
              if s["method"] == method and s["group"] == "novel" and math.isfinite(s.get("psnr", math.nan))]
    ranked = [subject for _, subject in sorted(scored, reverse=True)]
    best = ranked[: min(n, len(ranked) // 2 or len(ranked))]
    worst = [s for s in ranked[::-1] if s not in best][:n]
    return best, worst


def best_worst_grid(methods: Sequence[Method], data: Path, config: EvalConfig, rows: Sequence[dict[str, Any]],
                    best: Sequence[str], worst: Sequence[str], path: Path) -> Path | None:
    """Renders the chosen subjects again (no scoring) into one PNG: per subject, the novel target farthest
    from the input, the extreme pair's target closest to a true profile (|yaw| 90) and the first
    opposite-profile pair; columns input, target, every method (label: its PSNR)."""
    from perchead.io.media import save_grid

    from .harness import group_of
    from .protocol import angle_between

    chosen = {s: f"best {i + 1}" for i, s in enumerate(best)} | {s: f"worst {i + 1}" for i, s in enumerate(worst)}
    if not chosen:
        return None
    psnr = {(r["subject"], r["setting"], r["target"], r["method"]): r.get("psnr", math.nan) for r in rows}
    names = [n for m in methods for n in m.names]
    shown = ("novel", "extreme", "opposite_profile")  # one row each per subject, in this order
    cases: dict[str, dict[str, tuple[Case, int]]] = {s: {} for s in chosen}

    def collect(case: Case) -> None:
        group, targets = group_of(case.pair.setting), case.pair.targets
        if group not in shown or group in cases[case.subject]:
            return
        if group == "novel":
            t = max(range(len(targets)), key=lambda i: angle_between(case.pair.input, targets[i]))
        elif group == "extreme":
            t = min(range(len(targets)), key=lambda i: abs(abs(targets[i].yaw_deg) - 90.0))
        else:
            t = 0
        cases[case.subject][group] = (case, t)

    evaluate(methods, data, replace(config, subjects=tuple(chosen), max_subjects=None), None, on_case=collect)
    cells, labels = [], []
    for subject in [*best, *worst]:
        for case, t in (cases[subject][g] for g in shown if g in cases[subject]):
            target = case.pair.targets[t]
            cells += [case.input, case.targets[t]] + [case.renders[n][t] for n in names]
            setting = case.pair.setting.replace("opposite_profile_", "opp. ").replace("_to_", ">")
            labels += [f"{chosen[subject]}: {subject}", f"{setting} yaw {target.yaw_deg:.0f}"]
            labels += [f"{'template' if n == BASELINE else n[:18]} "
                       f"{psnr.get((subject, case.pair.setting, target.name, n), math.nan):.1f} dB" for n in names]
    if not cells:
        return None
    return save_grid([c.clamp(0, 1).permute(1, 2, 0) for c in cells], path, 2 + len(names), labels)


# -- the command ------------------------------------------------------------------------------------------------
def run_eval(checkpoints: dict[str, str], data: Path, out: Path, config: EvalConfig,
             metrics: Sequence[str] = tuple(METRICS), metric_config: MetricConfig | None = None,
             shp: Literal["auto", "both", "off"] = "auto", figure_subjects: int = 2,
             yaw_bin_deg: float = 30.0, command: str = "", bucket_deg: float = 30.0) -> dict[str, Any]:
    """Evaluate, write every output file into ``out`` and return what summary.json holds (see the module
    doc; values that could not be measured are None)."""
    if not checkpoints:
        raise ValueError("give at least one --checkpoint (the mean-colour template uses its template)")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    bucket_edges(bucket_deg)  # a bad bucket width fails here, before any model runs
    models = {name: PercHead.from_pretrained(path).eval() for name, path in checkpoints.items()}
    first = next(iter(models.values()))
    methods: list[Method] = []
    for name, model in models.items():
        sharpened = shp == "both" or (shp == "auto" and not shp_is_identity(model))
        methods.append(ModelMethod(name, model, sharpened, source=checkpoints[name]))
        if config.fit_steps > 0:
            given = {"size": config.fit_size, "tune_steps": config.fit_tune_steps}
            fit = FitConfig(steps=config.fit_steps, **{k: v for k, v in given.items() if v is not None})
            methods.append(FittedMethod(name, model, fit, source=checkpoints[name]))
    methods.append(MeanColourTemplate(first.template, first.config.image_size, config.baseline_opacity,
                                      config.baseline_scale))
    method_names = [n for m in methods for n in m.names]
    suite = MetricSuite(list(metrics), metric_config or MetricConfig())  # logs each unavailable metric once
    run: EvalRun = evaluate(methods, data, config, suite, progress=True, label="perchead eval")
    rows = suite.rows
    # Table columns: metrics that gave at least one value (an identity metric may find no face at all).
    measured = [m for m in metrics if m not in suite.unavailable and any(math.isfinite(r[m]) for r in rows)]
    per_subject, summary = aggregate(rows, list(metrics), method_names)
    info = {
        "command": command, "checkpoints": checkpoints, "data": str(data), "split": config.split,
        "subjects": run.subjects, "size": run.size, "seconds": round(run.seconds, 1), "machine": machine(),
        "methods": {n: m.description + ("" if not n.endswith("_sharpened") else " + SHP-CNN")
                    for m in methods for n in m.names},
        "metric_settings": suite.settings(), "unavailable": suite.unavailable,
        "faces_not_found": suite.faces_not_found, "subjects_without_pairs": run.without_pairs,
        "protocol": describe_protocol(config.protocol), "config": asdict(config),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "rows.csv")
    write_csv(per_subject, out / "subjects.csv")
    write_csv(summary, out / "summary.csv")
    figures: dict[str, str] = {}
    bins = yaw_bins(rows, method_names, measured, yaw_bin_deg)
    write_csv(bins, out / "metric_vs_yaw.csv")
    if plot_metric_vs_yaw(bins, method_names, out / "metric_vs_yaw.png", bin_deg=yaw_bin_deg) is not None:
        figures["Metric against target yaw (data: metric_vs_yaw.csv)"] = "metric_vs_yaw.png"
    buckets = yaw_buckets(rows, method_names, measured, bucket_deg)
    write_csv(buckets, out / "yaw_buckets.csv")
    if plot_yaw_buckets(buckets, method_names, out / "yaw_buckets.png", bucket_deg=bucket_deg) is not None:
        figures["Input yaw x target yaw (data: yaw_buckets.csv)"] = "yaw_buckets.png"
    if figure_subjects > 0:
        best, worst = rank_subjects(per_subject, method_names[0], figure_subjects)
        if best_worst_grid(methods, data, config, rows, best, worst, out / "best_worst.png") is not None:
            figures[f"Best and worst subjects of `{method_names[0]}` (novel-view PSNR)"] = "best_worst.png"
    if config.reads_input:
        figures.update(write_reads_input(models, data, config, out))
    result = _jsonable({"info": info, "summary": summary, "subjects": per_subject})  # NaN -> null
    atomic_write_json(out / "summary.json", result)
    atomic_write_text(out / "results.md",
                      results_markdown(summary, per_subject, info, measured, method_names, figures, buckets,
                                       bucket_deg))
    print(results_table(summary, measured, method_names))
    print(f"wrote {out}/: rows.csv, subjects.csv, summary.csv, summary.json, metric_vs_yaw.csv, yaw_buckets.csv, "
          "results.md, "
          + ", ".join(figures.values()))
    return result


def write_reads_input(models: dict[str, PercHead], data: Path, config: EvalConfig, out: Path) -> dict[str, str]:
    """``--reads-input``: perchead.eval.reads_input's tables (reads_input.md), rows (reads_input.json) and the
    back-hair swatches (reads_input.png) of the checkpoints on the split; returns the figure for results.md."""
    from .reads_input import format_tables, measure, swatch_figure

    res = measure(models, data, split=config.split, max_subjects=config.max_subjects)
    atomic_write_json(out / "reads_input.json", _jsonable(
        {"colour_summary": res.colour_summary, "yaw_summary": res.yaw_summary, "back_summary": res.back_summary,
         "colour_rows": res.colour_rows}))
    atomic_write_text(out / "reads_input.md", "# Does the network read its input?\n\n" + format_tables(res) + "\n")
    print(format_tables(res))
    if swatch_figure(res, out / "reads_input.png") is None:
        return {}
    return {"Back-hair colour per subject: truth and each method (data: reads_input.md)": "reads_input.png"}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def eval_command(
    checkpoint: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(
        help="model folder or hub id, optionally NAME=PATH; repeat for several checkpoints")],
    data: Annotated[Path, tyro.conf.arg(help="dataset folder in perchead's format (e.g. from `perchead synth`)")],
    out: Annotated[Path, tyro.conf.arg(help="output folder (CSV, JSON, results.md, figures)")],
    name: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(
        help="names of the checkpoints, in order (instead of NAME=PATH or the folder names)")] = (),
    metrics: Annotated[tuple[str, ...], tyro.conf.arg(help="metrics to compute (unavailable ones: empty)")]
    = tuple(METRICS),
    shp: Annotated[Literal["auto", "both", "off"], tyro.conf.arg(
        help="sharpened columns: auto = only for a trained SHP-CNN; both = always; off = never")] = "auto",
    figure_subjects: Annotated[int, tyro.conf.arg(help="best and worst subjects each in best_worst.png")] = 2,
    yaw_bin_deg: Annotated[float, tyro.conf.arg(help="yaw bin width of metric_vs_yaw.png")] = 30.0,
    bucket_deg: Annotated[float, tyro.conf.arg(
        help="|yaw| bucket width of yaw_buckets.png/.csv (input x target)")] = 30.0,
    config: Annotated[EvalConfig, tyro.conf.arg(name="")] = EvalConfig(),  # noqa: B008 -- tyro default
    metric: MetricConfig = MetricConfig(),  # noqa: B008 -- tyro default
) -> int:
    """Evaluate checkpoints (PercHead or the lifting baseline) and the mean-colour template on the held-out
    multi-view subjects of a dataset (novel, extreme and opposite-profile views) with every available metric:
    CSV, JSON, a markdown table beside the paper's numbers, and figures. Exits 0 whatever the numbers."""
    checkpoints = parse_checkpoints(checkpoint, name)
    defaults = inspect.signature(eval_command).parameters
    given = {"metrics": metrics, "shp": shp, "figure_subjects": figure_subjects, "yaw_bin_deg": yaw_bin_deg,
             "bucket_deg": bucket_deg}
    options = {k.replace("_", "-"): v for k, v in given.items() if v != defaults[k].default}
    command = command_line(checkpoints, data, out, config, options)
    run_eval(checkpoints, data, out, config, metrics, metric, shp, figure_subjects, yaw_bin_deg, command, bucket_deg)
    return 0


def command_line(checkpoints: dict[str, str], data: Path, out: Path, config: EvalConfig,
                 options: dict[str, Any]) -> str:
    """The ``perchead eval`` command that reproduces a run: checkpoints, data, out, and every option that
    differs from its default (metric weight locations excepted)."""
    args = ["perchead", "eval"]
    for name, path in checkpoints.items():
        args += ["--checkpoint", f"{name}={path}"]
    args += ["--data", str(data), "--out", str(out)]

    def add(key: str, value: Any) -> None:
        args.append(f"--{key}")
        args.extend(str(v) for v in value) if isinstance(value, tuple | list) else args.append(str(value))

    for key, value in options.items():
        add(key, value)
    default, mine = asdict(EvalConfig()), asdict(config)
    for key, value in mine.items():
        if key == "protocol":
            for k, v in value.items():
                if v != default["protocol"][k]:
                    add(f"protocol.{k.replace('_', '-')}", v)
        elif value != default[key]:
            add(key.replace("_", "-"), value)
    return " ".join(shlex.quote(a) for a in args)


__all__ = ["METRIC_LABELS", "PAPER_RESULTS", "aggregate", "best_worst_grid", "bucket_edges", "bucket_label",
           "bucket_table", "checkpoint_name", "command_line", "drop_table", "eval_command", "metric_columns",
           "metric_label", "paired_table", "parse_checkpoints", "plot_metric_vs_yaw", "plot_yaw_buckets",
           "rank_subjects", "results_markdown", "results_table", "run_eval", "write_csv", "yaw_bins", "yaw_buckets"]

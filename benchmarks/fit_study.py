"""The fit of ``perchead reconstruct`` on held-out synthetic heads: PSNR per target |yaw| bucket for the network
alone and for each fit, and each fitted minus the network (the tables of docs/lab_notebook.md).

    python benchmarks/fit_study.py --rows OUT/rows.csv       # a `perchead eval ... --fit-steps 60` run's rows
    python benchmarks/fit_study.py --data DATA --subjects 4 [--offset 0] \\
        --variant default='{}' --variant nofree='{"free_regions": []}' [--true-camera default] [--edges]
        [--figure near.png]

Buckets: those of :mod:`perchead.eval.reads_input` (0-30, 30-60, 60-105, 105-150, 150-180); rows of the
``novel`` group (frontal inputs), each (subject, input, target, method) once. ``--variant NAME=JSON`` fits with
``FitConfig(**JSON)`` (the camera estimated from the image, as for a photo; ``--true-camera NAME``: that variant
is given the input view's own camera instead); each variant's line below the table gives the range of its fits'
``matte_outside`` (the share of the input's matte outside the network's silhouette). ``--edges`` also prints,
per method, where its error near the input (target abs(yaw) < 30) lies: the share of the squared error within
2 px of the target's silhouette (the pixels within 2 px of where the target turns from white to head) and
the PSNR of the rest, over the images' summed squared error. ``--figure PATH`` writes those views (the input,
the target, each method's render), a row each.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

EDGE_PX = 2
NEAR_DEG = 30.0


def near_targets(case) -> list[int]:
    """Indices of a novel pair's targets within NEAR_DEG of the input (none for the other groups' pairs)."""
    from perchead.eval.harness import group_of

    if group_of(case.pair.setting) != "novel":
        return []
    return [i for i, target in enumerate(case.pair.targets) if abs(target.yaw_deg) < NEAR_DEG]


class EdgeError:
    """Where each method's squared error lies near the input: within EDGE_PX of the target's silhouette or not."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def __call__(self, case) -> None:
        import torch.nn.functional as F

        k = 2 * EDGE_PX + 1
        for i in near_targets(case):
            truth = case.targets[i]
            head = (truth < 0.96).any(0, keepdim=True).float()[None]  # targets are on white
            band = (F.max_pool2d(head, k, 1, EDGE_PX) + F.max_pool2d(-head, k, 1, EDGE_PX))[0]  # dilated - eroded
            for method, renders in case.renders.items():
                err = ((renders[i] - truth) ** 2).mean(0, keepdim=True)
                s = self.sums.setdefault(method, [0.0, 0.0, 0])
                s[0] += float(err.mean())
                s[1] += float((err * band).mean())
                s[2] += 1

    def table(self) -> str:
        lines = [f"| method (target abs(yaw) < {NEAR_DEG:.0f}) | images | share of the squared error within "
                 f"{EDGE_PX} px of the silhouette | PSNR of the rest (dB) |", "|---|---:|---:|---:|"]
        for method, (total, edge, n) in self.sums.items():
            lines.append(f"| {method} | {n} | {edge / total:.2f} | {-10 * math.log10((total - edge) / n):.2f} |")
        return "\n".join(lines)


class NearFigure:
    """Each novel pair's targets within NEAR_DEG of the input: a row of the input, the target and every method's
    render, for ``--figure``."""

    def __init__(self) -> None:
        self.cells: list = []
        self.labels: list[str] = []
        self.columns = 0

    def __call__(self, case) -> None:
        for i in near_targets(case):
            yaw = case.pair.targets[i].yaw_deg
            row = [("input", case.input), (f"{case.subject} {yaw:+.0f} deg", case.targets[i])]
            row += [(method, renders[i]) for method, renders in case.renders.items()]
            self.cells += [im.clamp(0, 1).permute(1, 2, 0) for _, im in row]
            self.labels += [label for label, _ in row]
            self.columns = len(row)

    def save(self, path: Path) -> None:
        from perchead.io import image_grid, save_image

        save_image(image_grid(self.cells, self.columns, self.labels), path)


def table(rows: list[dict], methods: list[str]) -> str:
    from perchead.eval.reads_input import summarise_yaw

    seen, picked = set(), []
    for r in rows:
        key = (r["subject"], r["input"], r["target"], r["method"])
        if r["group"] == "novel" and r["method"] in methods and key not in seen:
            seen.add(key)
            picked.append({"method": r["method"], "yaw": float(r["target_yaw_deg"]), "psnr": float(r["psnr"])})
    cells = {(s["bucket"], s["method"]): s for s in summarise_yaw(picked)}
    net, fits = methods[0], [m for m in methods[1:] if m.endswith("_fitted")]
    lines = ["| target abs(yaw) | images | " + " | ".join(methods) + " | " + " | ".join(f"{m} - {net}" for m in fits)
             + " |", "|---|---:|" + "---:|" * (len(methods) + len(fits))]
    for bucket in dict.fromkeys(b for b, _ in cells):
        psnr = {m: cells[(bucket, m)]["psnr"] for m in methods if (bucket, m) in cells}
        lines.append(f"| {bucket} | {cells[(bucket, net)]['images']} | "
                     + " | ".join(f"{psnr.get(m, math.nan):.2f}" for m in methods) + " | "
                     + " | ".join(f"{psnr.get(m, math.nan) - psnr[net]:+.2f}" for m in fits) + " |")
    return "\n".join(lines)


def run_variants(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    from perchead.data import read_dataset
    from perchead.eval.harness import EvalConfig, FittedMethod, ModelMethod, eval_subjects, evaluate
    from perchead.eval.metrics import MetricSuite
    from perchead.inference.fit import FitConfig
    from perchead.inference.pose import Pose, centre_angles
    from perchead.inference.tune import fit_network
    from perchead.model import PercHead

    class Recorded(FittedMethod):
        """perchead eval's fitted method, keeping each fit's matte_outside; optionally given the true camera."""

        def __init__(self, name: str, model: PercHead, fit: FitConfig, true_camera: bool) -> None:
            super().__init__(name, model, fit)
            self.true_camera, self.outside = true_camera, []

        def fit_input(self, gaussians, image, mask, input_viewmat, backend):
            pose = None
            if self.true_camera:  # the input view's orbit camera (the synthetic views are orbit cameras)
                pose = Pose(*centre_angles(-input_viewmat[:3, :3].T @ input_viewmat[:3, 3]), "given")
            result = fit_network(self.model, image[None], mask[None], image, mask, self.fit, pose=pose,
                                 gaussians=gaussians, backend=backend)
            self.outside.append(result.matte_outside)
            return result

    model = PercHead.from_pretrained(args.checkpoint).eval()
    methods = [ModelMethod("network", model, False)]
    for spec in args.variant:
        name, _, kw = spec.partition("=")
        methods.append(Recorded(name, model, FitConfig(**json.loads(kw or "{}")), name in args.true_camera))
    data = read_dataset(args.data)
    subjects = eval_subjects(data, EvalConfig())[args.offset:args.offset + args.subjects]
    suite = MetricSuite(["psnr"])
    edges = EdgeError() if args.edges else None
    figure = NearFigure() if args.figure else None

    def on_case(case) -> None:
        for hook in (edges, figure):
            if hook is not None:
                hook(case)

    evaluate(methods, data, EvalConfig(subjects=tuple(s.id for s in subjects)), suite, progress=True,
             on_case=on_case)
    for m, spec in zip(methods[1:], args.variant, strict=True):
        print(f"{m.names[0]} ({spec}{', the true camera' if m.true_camera else ''}): matte_outside "
              f"{min(m.outside):.3f}-{max(m.outside):.3f} over {len(m.outside)} fits")
    print(f"subjects: {', '.join(s.id for s in subjects)}")
    if edges is not None:
        print(edges.table())
    if figure is not None:
        figure.save(args.figure)
        print(f"wrote {args.figure}")
    return suite.rows, [n for m in methods for n in m.names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, help="rows.csv of a `perchead eval --fit-steps N` run: print its table")
    ap.add_argument("--data", type=Path, help="a synthetic dataset (its test split's subjects are fitted)")
    ap.add_argument("--checkpoint", default="src/perchead/assets/demo")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--offset", type=int, default=0, help="skip this many test subjects first")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="a fit: FitConfig fields as JSON ('{}': the defaults); repeatable")
    ap.add_argument("--edges", action="store_true", help="where the error near the input lies (module docstring)")
    ap.add_argument("--figure", type=Path, help="write the views within 30 degrees of the input, every method's")
    ap.add_argument("--true-camera", nargs="*", default=[], metavar="NAME", help="variants given the true camera")
    args = ap.parse_args()
    if args.rows:
        with open(args.rows, newline="") as f:
            rows = list(csv.DictReader(f))
        methods = list(dict.fromkeys(r["method"] for r in rows))
        base = next(m for m in methods if not m.endswith(("_fitted", "_sharpened")) and m != "template_mean_colour")
        methods = [base, *[m for m in methods if m != base]]
    elif args.data and args.variant:
        rows, methods = run_variants(args)
    else:
        ap.error("give --rows, or --data with at least one --variant")
    print(table(rows, methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())

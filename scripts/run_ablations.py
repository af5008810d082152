"""Baselines and ablations (the paper's Table 2), one command each, on a dataset in perchead's format.

    python scripts/run_ablations.py baseline --data outputs/demo2/data --work outputs/ablations --steps 800
    python scripts/run_ablations.py data     --data outputs/demo2/data --work outputs/ablations --steps 800
    python scripts/run_ablations.py loss     --data outputs/demo2/data --work outputs/ablations --steps 800
    python scripts/run_ablations.py shp      --data outputs/demo2/data --work outputs/ablations --steps 800

Studies (every run is a reconstruct stage with the settings of ``scripts/train_demo.py``: its ``COMMON`` and
``RECONSTRUCT`` values and its preset, except ``--steps``; the script reads them from there so both stay in
step):

* ``baseline``: PercHead (template decoder) vs the 2D-lifting decoder (``--model.decoder lifting``, same
  data, loss and budget) vs the mean-colour template, on perchead eval's tasks (novel, extreme = frontal
  input -> profiles, with the back as its own column, and opposite_profile).
* ``data``: single-view subjects only (``--data.studio-fraction 0``) / multi-view only (1) / both (the
  PercHead run, train_demo's mixing ratio).
* ``loss``: pixel (L1 + SSIM, the PercHead run) / LPIPS / DINO / SAM / DINO + SAM (the paper's). A loss
  whose package or weights are absent here is listed as not run, with the reason.
* ``shp``: SHP-CNN off / on: the sharpen stage (train_demo's ``SHARPEN`` settings) from the PercHead run,
  evaluated with and without the sharpening CNN.

Runs are shared between studies (``<work>/runs/<name>``; the PercHead run is the data study's "both" and the
loss study's "pixel"). Everything is resumable: training uses ``--resume auto`` (a finished run is not
retrained) and an evaluation is redone only when its checkpoints changed. Every command is printed (and
appended to ``<work>/ablations.log`` with its output) before it runs. Each study ends with a markdown table
and the subject-by-subject differences between its variants (printed and written to
``<work>/<study>/table.md``) and the figures of ``perchead eval`` in
``<work>/<study>/eval/``. Wall times of every command go to ``<work>/times.json``.

Train one run at a time on a shared machine: set ``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` if other jobs
run beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("baseline", "data", "loss", "shp")

# name -> (what it is, extra/overridden training options; a value None removes that flag)
RUNS: dict[str, tuple[str, dict[str, str | None]]] = {
    "perchead": ("PercHead (template decoder), train_demo's settings", {}),
    # The lifting decoder copies colours from its own pixels: no colour read (None drops a flag).
    "lifting": ("2D-lifting decoder, same data, loss and budget", {"--model.decoder": "lifting",
                                                                   "--model.colour-read": None}),
    "single_view": ("single-view subjects only", {"--data.studio-fraction": "0"}),
    "multi_view": ("multi-view subjects only", {"--data.studio-fraction": "1"}),
    "loss_lpips": ("LPIPS loss", {"--loss-name": "lpips"}),
    "loss_dino": ("DINOv2 loss", {"--loss-name": "dino"}),
    "loss_sam": ("SAM 2.1 loss", {"--loss-name": "sam"}),
    "loss_perceptual": ("DINOv2 + SAM 2.1 loss (the paper's)", {"--loss-name": "perceptual"}),
}
# study -> [(row label, run name)]
STUDY_ROWS: dict[str, list[tuple[str, str]]] = {
    "baseline": [("PercHead (template cross-attention)", "perchead"), ("2D lifting", "lifting")],
    "data": [("single-view only", "single_view"), ("multi-view only", "multi_view"), ("both", "perchead")],
    "loss": [("L1 + SSIM", "perchead"), ("LPIPS", "loss_lpips"), ("DINO", "loss_dino"), ("SAM", "loss_sam"),
             ("DINO + SAM", "loss_perceptual")],
}


def load_train_demo():
    """scripts/train_demo.py as a module: its COMMON / RECONSTRUCT / SHARPEN settings and train_cmd()."""
    spec = importlib.util.spec_from_file_location("train_demo", REPO / "scripts" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_option(cmd: list[str], option: str, value: str | None) -> list[str]:
    """Replace ``option``'s value in a command, or append the option (tyro accepts options after the
    preset subcommand); ``value`` None removes ``option``, a flag without a value."""
    cmd = list(cmd)
    if value is None:
        return [c for c in cmd if c != option]
    if option in cmd:
        cmd[cmd.index(option) + 1] = value
    else:
        cmd += [option, value]
    return cmd


class Runner:
    def __init__(self, work: Path, data: Path, steps: int) -> None:
        self.work, self.data, self.steps = work, data, steps
        self.demo = load_train_demo()
        self.log = work / "ablations.log"
        work.mkdir(parents=True, exist_ok=True)

    def run(self, cmd: list[str], label: str) -> float:
        """train_demo's run() (printed, logged, fails loudly), and its wall time appended to times.json."""
        seconds, _ = self.demo.run(cmd, self.log)
        path = self.work / "times.json"
        times = json.loads(path.read_text()) if path.is_file() else []
        times.append({"what": label, "seconds": round(seconds, 1), "command": self.demo.show(cmd),
                      "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                      "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
        path.write_text(json.dumps(times, indent=1) + "\n")
        return seconds

    # -- training ---------------------------------------------------------------------------------------------
    def train_command(self, name: str) -> list[str]:
        settings = {**self.demo.RECONSTRUCT, "steps": self.steps}
        cmd = self.demo.train_cmd("reconstruct", self.data, self.work / "runs" / name, settings)
        for option, value in RUNS[name][1].items():
            cmd = set_option(cmd, option, value)
        return cmd

    def finished(self, run_dir: Path, steps: int) -> Path | None:
        return self.demo.latest_checkpoint(run_dir) if self.demo.finished_steps(run_dir) == steps else None

    def ensure(self, run_dir: Path, steps: int, cmd: list[str], label: str) -> Path:
        """The run's final checkpoint, training it first unless it has finished."""
        if self.finished(run_dir, steps) is None:
            self.run(cmd, label)
        ckpt = self.finished(run_dir, steps)
        if ckpt is None:
            raise SystemExit(f"{run_dir} did not reach step {steps}; see {self.log}")
        return ckpt

    def train(self, name: str) -> Path:
        return self.ensure(self.work / "runs" / name, self.steps, self.train_command(name), f"train {name}")

    def sharpen(self, init_from: Path) -> Path:
        s, run_dir = self.demo.SHARPEN, self.work / "runs" / "perchead_sharpen"
        cmd = self.demo.train_cmd("sharpen", self.data, run_dir, s, init_from=init_from)
        return self.ensure(run_dir, s["steps"], cmd, "train sharpen")

    # -- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, study: str, checkpoints: dict[str, Path], extra: list[str] = ()) -> dict:
        out = self.work / study / "eval"
        cmd = [sys.executable, "-m", "perchead", "eval", "--data", str(self.data), "--out", str(out)]
        for name, path in checkpoints.items():
            cmd += ["--checkpoint", f"{name}={path}"]
        cmd += list(extra)
        # The evaluation is redone only when its command (checkpoints, options) or the checkpoints' weights
        # changed (a retrained run writes the same step folder names).
        stamp, summary = self.work / study / "eval_command.txt", out / "summary.json"
        weights = [Path(p) / "model.safetensors" for p in checkpoints.values()]
        key = "\n".join([self.demo.show(cmd)] + [f"{w} {w.stat().st_size} {w.stat().st_mtime_ns}" for w in weights])
        if summary.is_file() and stamp.is_file() and stamp.read_text() == key:
            print(f"evaluation of {study} is up to date ({summary})", flush=True)
        else:
            self.run(cmd, f"eval {study}")
            stamp.write_text(key)
        return json.loads(summary.read_text())


def loss_unavailable(name: str) -> str | None:
    """None if the loss can be built here, else why not (its package or weights are missing)."""
    from perchead.losses import LossConfig, build_loss

    try:
        build_loss(name, LossConfig())
    except (RuntimeError, OSError, ImportError, ValueError) as exc:
        return textwrap.shorten(f"{type(exc).__name__}: {str(exc).splitlines()[0]}", 160, placeholder=" ...")
    return None


def study_table(study: str, rows: list[tuple[str, str]], result: dict, notes: dict[str, str]) -> str:
    """Markdown table: one row per ablation variant, a column per (views group, metric measured) for the
    groups of perchead eval (novel, extreme = the paper's frontal -> profiles, extreme_back, opposite_profile)
    that have values, and extreme minus novel PSNR."""
    from perchead.eval.protocol import GROUPS
    from perchead.eval.report import metric_columns, metric_label

    summary = result["summary"]
    metrics = metric_columns(summary, result["info"].get("unavailable", {}))
    groups = [g for g in GROUPS if any(s["group"] == g for s in summary)]
    head = (["variant", "method"] + [f"{g} {metric_label(m)}" for g in groups for m in metrics]
            + ["extreme − novel PSNR"])
    width = len(groups) * len(metrics) + 1
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * width]
    value = {(s["method"], s["group"]): s for s in summary}
    for label, method in rows:
        if method in notes:
            lines.append(f"| {label} | not run: {notes[method]} |" + " |" * width)
            continue
        cells = []
        for group in groups:
            s = value.get((method, group))
            cells += ["" if s is None else _fmt(s.get(m), s.get(f"{m}_sd")) for m in metrics]
        novel, extreme = value.get((method, "novel")), value.get((method, "extreme"))
        drop = "" if novel is None or extreme is None else f"{extreme['psnr'] - novel['psnr']:+.2f}"
        lines.append(f"| {label} | `{method}` | " + " | ".join(cells) + f" | {drop} |")
    return "\n".join(lines)


def paired_table(rows: list[tuple[str, str]], subjects_csv: Path, notes: dict[str, str]) -> str:
    """Subject-by-subject differences between the study's variants (perchead eval's ``subjects.csv``): for each
    variant minus each one listed before it and each views group, the mean PSNR (dB) and SSIM difference over
    the subjects both were scored on, and on how many of them the later variant's PSNR is higher."""
    import csv

    from perchead.eval.protocol import GROUPS

    scores: dict[tuple[str, str, str], tuple[float, float]] = {}
    with open(subjects_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            scores[r["method"], r["group"], r["subject"]] = (float(r["psnr"]), float(r["ssim"]))
    groups = [g for g in GROUPS if any(k[1] == g for k in scores)]
    ran = [(label, method) for label, method in rows if method not in notes]
    lines = ["| comparison | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for j, (label_j, method_j) in enumerate(ran):
        for label_i, method_i in ran[:j]:
            cells = []
            for g in groups:
                both = [k[2] for k in scores if k[:2] == (method_j, g) and (method_i, g, k[2]) in scores]
                if not both:
                    cells.append("")
                    continue
                dp = [scores[method_j, g, s][0] - scores[method_i, g, s][0] for s in both]
                ds = [scores[method_j, g, s][1] - scores[method_i, g, s][1] for s in both]
                cells.append(f"{sum(dp) / len(dp):+.2f} dB ({sum(d > 0 for d in dp)}/{len(dp)} higher), "
                             f"SSIM {sum(ds) / len(ds):+.3f}")
            lines.append(f"| {label_j} − {label_i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(path: Path) -> Path:
    """Absolute path (symlinks kept as named), relative to the repository when inside it."""
    path = Path(os.path.abspath(path))
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _fmt(v, sd=None) -> str:
    """mean ± sd over subjects, as in perchead eval's results.md."""
    from perchead.eval.report import _cell

    return _cell(v, sd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=STUDIES)
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (perchead's format)")
    ap.add_argument("--work", type=Path, required=True, help="runs, evaluations, tables, log")
    ap.add_argument("--steps", type=int, required=True, help="reconstruct steps of every training run")
    ap.add_argument("--eval-args", nargs=argparse.REMAINDER, default=[],
                    help="extra options passed to `perchead eval` (e.g. --max-subjects 4); must come last")
    args = ap.parse_args()
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    if not args.data.is_dir():
        raise SystemExit(f"dataset folder {args.data} not found")
    work, data = _short(args.work), _short(args.data)
    os.chdir(REPO)  # the commands and the paths in them are relative to the repository when inside it
    runner = Runner(work, data, args.steps)
    notes: dict[str, str] = {}
    if args.study == "shp":
        base = runner.train("perchead")
        sharp = runner.sharpen(base)
        # --shp both: the sharpened checkpoint scored without and with its SHP-CNN.
        result = runner.evaluate("shp", {"perchead_shp": sharp}, ["--shp", "both", *args.eval_args])
        rows = [("SHP-CNN off", "perchead_shp"), ("SHP-CNN on", "perchead_shp_sharpened")]
    else:
        rows = STUDY_ROWS[args.study]
        checkpoints = {}
        for _, name in rows:
            loss = RUNS[name][1].get("--loss-name")
            # Only before training: building a DINOv2/SAM loss loads its weights, and a finished run needs none.
            to_train = runner.finished(work / "runs" / name, args.steps) is None
            reason = loss_unavailable(loss) if loss and to_train else None
            if reason is not None:
                notes[name] = reason
                print(f"not run: {name} ({RUNS[name][0]}): {reason}", flush=True)
                continue
            checkpoints[name] = runner.train(name)
        result = runner.evaluate(args.study, checkpoints, list(args.eval_args))
    if args.study == "baseline":
        rows = rows + [("mean-colour template", "template_mean_colour")]
    table = study_table(args.study, rows, result, notes)
    table += "\n\nSubject by subject:\n\n" + paired_table(rows, work / args.study / "eval" / "subjects.csv", notes)
    path = work / args.study / "table.md"
    path.write_text(f"<!-- python scripts/run_ablations.py {args.study} --data {args.data} --work {args.work} "
                    f"--steps {args.steps} -->\n\n{table}\n")
    print(table)
    print(f"\nwrote {path}; per-image rows, per-subject means, results.md and figures in {work / args.study / 'eval'}")


if __name__ == "__main__":
    main()

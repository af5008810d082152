"""Validation and training loss curves of ``perchead train`` runs, side by side, as one PNG and a table.

    python scripts/plot_val_curves.py outputs/ablations_asym/runs/perchead outputs/ablations_asym/runs/lifting \
        --out docs/images/baseline_asym_curves.png

Reads each run's ``val/val.jsonl`` (the fixed validation samples, every ``--log.val-every`` steps) and
``steps.jsonl`` (every step's training loss, drawn as a moving average). Prints, per run, the validation loss
at each logged step and the change over the last quarter of the run: a curve that has flattened changes by
little there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perchead.train.trainer import STEP_LOG, read_step_log


def last_quarter_change(points: list[tuple[int, float]]) -> float:
    """Relative change of the loss from 3/4 of the run to its end (negative: still falling)."""
    end = points[-1][0]
    start = min(points, key=lambda p: abs(p[0] - 0.75 * end))
    return (points[-1][1] - start[1]) / start[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (their names label the curves)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--window", type=int, default=100, help="moving-average window of the training loss")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(11, 4))
    for run in args.runs:
        val = [(r["step"], r["loss"]) for r in read_step_log(run / "val" / "val.jsonl")]
        steps = [r for r in read_step_log(run / STEP_LOG) if not r.get("skipped")]
        if not val or not steps:
            raise SystemExit(f"{run}: no validation or step records")
        ax_val.plot(*zip(*val, strict=True), marker="o", ms=3, label=run.name)
        losses = [r["loss"] for r in steps]
        w = max(1, min(args.window, len(losses)))
        avg = [sum(losses[i - w:i]) / w for i in range(w, len(losses) + 1)]
        ax_train.plot([r["step"] for r in steps][w - 1:], avg, label=run.name)
        print(f"{run.name}: val loss " + ", ".join(f"{s}: {v:.4f}" for s, v in val)
              + f"; last-quarter change {last_quarter_change(val):+.1%}")
    ax_val.set(title="validation loss (fixed samples)", xlabel="step", ylabel="loss")
    ax_train.set(title=f"training loss ({args.window}-step moving average)", xlabel="step")
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

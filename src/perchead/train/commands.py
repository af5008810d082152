"""``perchead train``: every field of :class:`TrainConfig` as a command-line option.

Single process::

    perchead train --data.root data/synth --out runs/tiny model:tiny --model.image-size 64

Many processes (one per GPU, or several on a CPU with gloo)::

    torchrun --nproc_per_node 4 -m perchead train --data.root ... --out runs/base model:base
"""

from __future__ import annotations

from typing import Annotated

import tyro

from .config import TrainConfig


# CascadeSubcommandArgs: options may also follow the model:PRESET subcommand, so appending --resume auto to
# the original command line works.
def train(config: Annotated[TrainConfig, tyro.conf.arg(name=""), tyro.conf.CascadeSubcommandArgs]) -> int:
    """Train PercHead: stage reconstruct (whole network), sharpen (SHP-CNN only) or edit (issue 8).

    The model is picked as a preset subcommand (model:tiny, model:small, model:base, model:paper; tiny by
    default) whose fields can be overridden after it (--model.image-size 64). The resolved config is saved as
    <out>/train_config.json; checkpoints go to <out>/checkpoints, the per-step log to <out>/steps.jsonl.
    Re-run the same command with --resume auto to continue a stopped run.
    """
    from .trainer import Trainer

    result = Trainer(config).run()
    from .distributed import env_info

    if env_info().is_main:
        where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
        what = "finished" if result.stopped_by is None else f"stopped (signal {result.stopped_by})"
        print(f"perchead train: {what} at step {result.step} (last loss {result.last_loss:.5f}, "
              f"{result.skipped_steps} skipped step(s)){where}", flush=True)
    # The shell convention for "ended by signal N", so job schedulers see an interrupted run.
    return 0 if result.stopped_by is None else 128 + result.stopped_by


__all__ = ["train"]

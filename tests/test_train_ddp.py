"""Many processes: per-rank data shards, and a 2-process gloo DDP run on CPU keeping ranks identical."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perchead.train import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig, read_step_log
from perchead.train.distributed import DistInfo, ShardedOrder
from perchead.train.testing import tiny_model_config, write_toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_order_gives_ranks_disjoint_slices_of_each_step():
    batch, world = 2, 3
    orders = [ShardedOrder(batch, DistInfo(r, world, r)) for r in range(world)]
    positions = [p for step in range(1, 6) for o in orders for p in o.batch_for_step(step)]
    # Every global position exactly once, in step order: no rank repeats or skips another's samples.
    assert positions == list(range(5 * batch * world))
    assert orders[1].batch_for_step(4) == [20, 21]
    # A resumed run (a fresh object) continues with the same positions.
    assert list(ShardedOrder(batch, DistInfo(1, world, 1)).iterate(4, 5)) == [[20, 21], [26, 27]]


def _ddp_config(tmp_path: Path, data: Path, steps: int) -> TrainConfig:
    return TrainConfig(out=str(tmp_path / "run"), steps=steps, device="cpu", loss_name="pixel",
                       model=tiny_model_config(), data=DataConfig(root=str(data), batch_size=1),
                       optim=OptimConfig(lr=3e-3, warmup_steps=1),
                       log=LogConfig(progress=False, tensorboard=False, val_every=0),
                       checkpoint=CheckpointConfig(every=steps))


def test_two_process_gloo_ddp_keeps_parameters_identical(tmp_path, monkeypatch):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from perchead.model import PercHead
    from perchead.train.testing import ddp_worker

    data = write_toy_dataset(tmp_path / "data", subjects=3, views=4, size=32, val=0)
    cfg = _ddp_config(tmp_path, data, steps=3)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(ddp_worker, args=(2, _free_port(), cfg.to_json(), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # Training moved the weights away from rank 0's initial ones (seed 1234 in ddp_worker).
    torch.manual_seed(1234)
    init = PercHead(cfg.model).trainable_state_dict()
    assert any(not torch.equal(init[k], ranks[0][k]) for k in ranks[0])
    # Rank 0 alone logged, counting both processes' samples, and wrote the checkpoint.
    log = read_step_log(tmp_path / "run" / "steps.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["samples"] == 2 for r in log)
    assert (tmp_path / "run" / "checkpoints" / "step_00000003" / "model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_runs_the_train_command(tmp_path):
    data = write_toy_dataset(tmp_path / "data", subjects=3, views=4, size=32, val=0)
    m = tiny_model_config()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "perchead", "train", "--data.root", str(data), "--out", str(tmp_path / "run"),
           "--steps", "2", "--loss-name", "pixel", "--device", "cpu", "--data.batch-size", "1",
           "--log.val-every", "0", "--log.no-progress", "model:tiny",
           "--model.image-size", str(m.image_size), "--model.template-resolution", str(m.template_resolution),
           "--model.vit-width", str(m.vit_width), "--model.vit-depth", str(m.vit_depth), "--model.vit-heads",
           str(m.vit_heads), "--model.f2d-width", str(m.f2d_width), "--model.width", str(m.width),
           "--model.heads", str(m.heads), "--model.layers", str(m.layers)]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished at step 2") == 1  # rank 0 only
    log = read_step_log(tmp_path / "run" / "steps.jsonl")
    assert [r["samples"] for r in log] == [2, 2]

"""Nothing lost: SIGKILL a real `python -m perchead train` process mid-run, resume it, check the result.

What "every step" means here: the finished run's steps.jsonl holds each step 1..N exactly once. Steps the
killed process did after its last checkpoint are redone by the resumed one (their old log lines are
dropped on resume) and, because the data order and the random states come back exactly, redone steps see
the same data; steps up to the checkpoint keep the killed run's log lines unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from perchead.model import PercHead
from perchead.train import load_train_state, read_latest, read_step_log
from perchead.train.testing import tiny_model_config, write_toy_dataset

TOTAL = 10


def _read_complete(path) -> list[dict]:
    """Log lines written so far (the process may be in the middle of one)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _command(data, out, every: int = 3) -> list[str]:
    m = tiny_model_config()
    return [sys.executable, "-m", "perchead", "train", "--data.root", str(data), "--out", str(out),
            "--steps", str(TOTAL), "--loss-name", "pixel", "--device", "cpu", "--data.batch-size", "1",
            "--checkpoint.every", str(every), "--checkpoint.keep-last", "2", "--log.val-every", "0",
            "--log.no-progress", "--optim.warmup-steps", "2", "--optim.lr", "1e-3", "model:tiny",
            "--model.image-size", str(m.image_size), "--model.template-resolution", str(m.template_resolution),
            "--model.vit-width", str(m.vit_width), "--model.vit-depth", str(m.vit_depth), "--model.vit-heads",
            str(m.vit_heads), "--model.f2d-width", str(m.f2d_width), "--model.width", str(m.width),
            "--model.heads", str(m.heads), "--model.layers", str(m.layers)]


def test_sigkill_then_resume_keeps_every_step(tmp_path):
    data = write_toy_dataset(tmp_path / "data", subjects=3, views=4, size=32, wild=1)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.Popen(_command(data, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pointer = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not pointer.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    # Kill once the run is past its first checkpoint, so some steps have to be redone after the resume.
    log_path = out / "steps.jsonl"
    def past_checkpoint() -> bool:
        saved = int(pointer.read_text().strip().removeprefix("step_") or 0)
        return any(r["step"] > saved for r in _read_complete(log_path))

    while proc.poll() is None and not past_checkpoint():
        assert time.monotonic() < deadline, "no step after the first checkpoint within 300 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_train_state(read_latest(out / "checkpoints")).step
    assert 3 <= killed_at < TOTAL
    killed_log = {r["step"]: r for r in _read_complete(out / "steps.jsonl")}
    assert max(killed_log) > killed_at  # the killed run got past its checkpoint: those steps get redone

    resumed = subprocess.run(_command(data, out) + ["--resume", "auto"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{killed_at:08d}'} at step {killed_at}" in resumed.stdout

    log = read_step_log(out / "steps.jsonl")
    assert [r["step"] for r in log] == list(range(1, TOTAL + 1))  # every step, exactly once, in order
    assert all(not r["skipped"] and r["loss"] is not None for r in log)
    for r in log[:killed_at]:  # the checkpointed part of the killed run is kept as it was
        assert r == killed_log[r["step"]]
    for r in log[killed_at:]:  # redone steps train on the same data and agree with the killed run's
        if r["step"] in killed_log:
            assert abs(r["loss"] - killed_log[r["step"]]["loss"]) <= 1e-4 * abs(r["loss"]) + 1e-6, r

    latest = read_latest(out / "checkpoints")
    assert latest.name == f"step_{TOTAL:08d}" and load_train_state(latest).step == TOTAL
    assert len(list((out / "checkpoints").glob("step_*"))) == 2  # keep_last
    model = PercHead.from_pretrained(latest)
    size = model.config.image_size
    g = model(torch.rand(1, 3, size, size), torch.ones(1, 1, size, size))
    g.check_finite()


def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits(tmp_path):
    data = write_toy_dataset(tmp_path / "data", subjects=2, views=4, size=32)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = _command(data, out, every=1000)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len(_read_complete(out / "steps.jsonl")) < 2:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "fewer than 2 steps within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    last = _read_complete(out / "steps.jsonl")[-1]["step"]
    assert 2 <= last < TOTAL
    latest = read_latest(out / "checkpoints")
    assert latest.name == f"step_{last:08d}" and load_train_state(latest).step == last  # no step lost
    assert f"stopped by signal {int(signal.SIGTERM)} after step {last}" in output

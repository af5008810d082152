"""An edit-stage run of the real `perchead train` process, stopped by SIGTERM after some steps, resumes with
`--resume auto` (the editing encoder comes back from the checkpoint) and finishes with every step once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from perchead.data.synth import SynthConfig, generate
from perchead.edit import EditNetwork
from perchead.edit.training import load_stage_model
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.train import load_train_state, read_latest, read_step_log
from perchead.train.testing import tiny_model_config

TOTAL = 8


def _steps_so_far(path) -> int:
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
            n += 1
        except json.JSONDecodeError:
            pass  # the process may be in the middle of a line
    return n


def test_stopped_edit_run_resumes_and_finishes(tmp_path):
    clip = save_tiny_models(tmp_path / "models")["clip"]
    data = tmp_path / "synth"
    generate(SynthConfig(subjects=3, views=3, size=32, surface_resolution=32), data, progress=False)
    torch.manual_seed(0)
    PercHead(tiny_model_config(56)).save_pretrained(tmp_path / "recon")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "perchead", "train", "--stage", "edit", "--init-from", str(tmp_path / "recon"),
           "--clip", str(clip), "--data.root", str(data), "--out", str(out), "--steps", str(TOTAL),
           "--loss-name", "pixel", "--device", "cpu", "--data.batch-size", "1", "--checkpoint.every", "3",
           "--log.val-every", "0", "--log.no-progress", "--optim.warmup-steps", "1", "--optim.lr", "1e-3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while _steps_so_far(out / "steps.jsonl") < 4:  # past the first checkpoint (step 3)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "fewer than 4 steps within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    stopped_at = load_train_state(read_latest(out / "checkpoints")).step
    assert 4 <= stopped_at < TOTAL
    # the stopped run's checkpoint holds the editing encoder next to the PercHead
    assert hasattr(load_stage_model(read_latest(out / "checkpoints")), "edit_encoder")

    resumed = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout
    log = read_step_log(out / "steps.jsonl")
    assert [r["step"] for r in log] == list(range(1, TOTAL + 1))
    assert all(not r["skipped"] for r in log)
    latest = read_latest(out / "checkpoints")
    assert latest.name == f"step_{TOTAL:08d}" and load_train_state(latest).step == TOTAL
    net = EditNetwork.from_pretrained(latest, clip=str(clip))
    seg = torch.zeros(1, 56, 56, dtype=torch.long)
    seg[0, 10:46, 14:42] = 1
    net.generate(seg, net.style_from_text("a head")).check_finite()

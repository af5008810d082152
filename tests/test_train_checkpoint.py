"""Checkpoints: atomic layout, pruning, RNG round trip, and clear errors for damaged checkpoints."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from perchead.cli import main as cli_main
from perchead.model import PercHead
from perchead.train import checkpoint as ckpt
from perchead.train.testing import tiny_model_config, write_toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")



def _state(step: int, model: PercHead) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 56, 56), torch.ones(1, 1, 56, 56)).means.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return {"step": step, "stage": "reconstruct", "world_size": 1, "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": [ckpt.capture_rng()], "counters": {"skipped_steps": 0}}


@pytest.fixture(scope="module")
def model() -> PercHead:
    return PercHead(tiny_model_config())


def test_save_load_round_trip_with_weights_only(tmp_path, model):
    state = _state(5, model)
    path = ckpt.save_checkpoint(tmp_path, model, state, keep_last=2)
    assert path.name == "step_00000005" and ckpt.read_latest(tmp_path) == path
    loaded = ckpt.load_train_state(path)
    assert loaded.step == 5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.load_state_dict(loaded.state["optimizer"])  # optimizer state survives the weights_only load
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    again = PercHead.from_pretrained(path)  # the checkpoint folder is also a model folder
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(v, again.trainable_state_dict()[k]), k


def test_rng_states_round_trip():
    state = ckpt.capture_rng()
    # The legacy global numpy generator is the one the checkpoint saves.
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # noqa: NPY002
    ckpt.restore_rng(state)
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_keep_last_and_leftovers_of_an_interrupted_save(tmp_path, model):
    leftover = tmp_path / ".step_00000009.abc.tmp"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half a file")
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, model, _state(step, model), keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert ckpt.read_latest(tmp_path).name == "step_00000004"
    assert not leftover.exists()
    # Saving a step that exists again (a resumed run redoing it) replaces it whole.
    ckpt.save_checkpoint(tmp_path, model, _state(4, model), keep_last=2)
    assert ckpt.load_train_state(tmp_path / "step_00000004").step == 4


def test_truncated_train_state_is_a_clear_error(tmp_path, model):
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, model, _state(step, model), keep_last=3)
    state = tmp_path / "step_00000002" / ckpt.STATE_NAME
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated or corrupt.*older checkpoints there: \['step_00000001'\]"):
        ckpt.load_train_state(tmp_path / "step_00000002")


def test_arbitrary_pickles_are_refused(tmp_path, model):
    ckpt.save_checkpoint(tmp_path, model, _state(1, model), keep_last=1)
    buf = io.BytesIO()
    torch.save({"format": ckpt.STATE_FORMAT, "version": 1, "step": 1, "payload": os.system}, buf)
    (tmp_path / "step_00000001" / ckpt.STATE_NAME).write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="not plain tensors"):
        ckpt.load_train_state(tmp_path / "step_00000001")


def test_damaged_latest_pointer_and_missing_files(tmp_path, model):
    ckpt.save_checkpoint(tmp_path, model, _state(1, model), keep_last=1)
    (tmp_path / ckpt.LATEST_NAME).write_text("../../etc\n")
    with pytest.raises(ValueError, match="damaged"):
        ckpt.read_latest(tmp_path)
    (tmp_path / "step_00000001" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        ckpt.load_train_state(tmp_path / "step_00000001")


def test_cli_resume_from_a_corrupt_checkpoint_exits_nonzero(tmp_path, model, capsys):
    data = write_toy_dataset(tmp_path / "data", subjects=2, views=2, size=32, val=0)
    run = tmp_path / "run"
    ckpt.save_checkpoint(run / "checkpoints", model, _state(2, model), keep_last=1)
    weights = run / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    m = tiny_model_config()
    rc = cli_main(["train", "--data.root", str(data), "--out", str(run), "--resume", "auto", "--steps", "3",
                   "--device", "cpu", "--loss-name", "pixel", "--log.no-progress", "model:tiny",
                   "--model.image-size", str(m.image_size), "--model.template-resolution",
                   str(m.template_resolution)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "perchead train: error:" in err and "truncated" in err and "model.safetensors" in err


def test_resume_of_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint or run folder"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)
    assert ckpt.resolve_resume("auto", tmp_path / "fresh") is None
    Path(tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        ckpt.resolve_resume(str(tmp_path / "empty"), tmp_path)

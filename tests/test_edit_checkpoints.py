"""Editing checkpoints that ship their own CLIP (named relative to the folder), notices, checkpoint_files,
and the grow_class map edit."""

import json
import shutil

import numpy as np
import pytest
import torch

from perchead.data.format import SEG
from perchead.edit import EditNetwork
from perchead.edit.segmentation import grow_class
from perchead.losses import load_clip
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.model import perchead_model as pm
from perchead.train.testing import tiny_model_config


def test_checkpoint_files_is_public_and_explains_bad_sources(tmp_path):
    assert not hasattr(pm, "_resolve_checkpoint")
    PercHead(tiny_model_config(56)).save_pretrained(tmp_path / "ckpt")
    config, weights = pm.checkpoint_files(tmp_path / "ckpt")
    assert (config, weights) == (tmp_path / "ckpt" / "config.json", tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match="is a file"):
        pm.checkpoint_files(weights)
    with pytest.raises(FileNotFoundError, match="not a perchead checkpoint folder"):
        pm.checkpoint_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        pm.checkpoint_files(tmp_path / "missing")


def test_bundled_clip_is_named_relative_and_moves_with_the_folder(tmp_path, monkeypatch):
    clip_src = save_tiny_models(tmp_path / "models")["clip"]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(clip_src, ckpt / "my_clip")
    torch.manual_seed(0)
    net = EditNetwork.from_reconstruction(PercHead(tiny_model_config(56)), clip=load_clip(str(ckpt / "my_clip")))
    net.notice = "a stand-in CLIP: text prompts are not understood"
    net.save_pretrained(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["edit"]["clip"] == "./my_clip" and config["notice"] == net.notice

    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.move(ckpt, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")  # the config's path is relative to the folder, not to the cwd
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = EditNetwork.from_pretrained(moved)
    assert loaded.edit_config.clip == str((moved / "my_clip").resolve())
    assert loaded.notice == net.notice
    seg = torch.zeros(1, 56, 56, dtype=torch.long)
    seg[0, 10:46, 14:42] = SEG["skin"]
    style = loaded.style_from_image(torch.rand(1, 3, 40, 40))
    assert torch.allclose(loaded.generate(seg, style).rgb, net.generate(seg, style).rgb, atol=1e-6)

    # a folder without its bundled CLIP is a clear error, and --clip still overrides it
    shutil.rmtree(moved / "my_clip")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        EditNetwork.from_pretrained(moved)
    assert EditNetwork.from_pretrained(moved, clip=str(clip_src)).edit_config.clip == str(clip_src)


def test_grow_class_only_takes_background():
    seg = np.zeros((20, 20), np.uint8)
    seg[5:15, 5:15] = SEG["skin"]
    seg[5:8, 5:15] = SEG["hair"]
    grown = grow_class(seg, "hair", 2)
    assert (grown[3:5, 5:15] == SEG["hair"]).all()  # 2 px above the old hair
    assert (grown[8:15, 5:15] == SEG["skin"]).all()  # the face is untouched
    assert grown[2, 10] == SEG["background"] and grown[6, 3] == SEG["hair"]
    assert (grow_class(seg, "hair", 0) == seg).all()
    with pytest.raises(ValueError, match="unknown class 'beard'"):
        grow_class(seg, "beard", 1)

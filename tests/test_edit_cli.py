"""`perchead edit` end to end on a tiny random editing checkpoint: the files of `perchead reconstruct`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.cli import main
from perchead.data.format import SEG
from perchead.edit import EditNetwork, load_segmentation, save_segmentation
from perchead.edit.fit import MapFitConfig
from perchead.inference import PHOTO_FILES
from perchead.io import load_ply
from perchead.losses import load_clip
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead, preset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_cli")
    clip = load_clip(str(save_tiny_models(root / "models")["clip"]))
    torch.manual_seed(0)
    EditNetwork.from_reconstruction(PercHead(preset("tiny")), clip=clip).save_pretrained(root / "ckpt")
    seg = np.zeros((256, 256), np.uint8)  # maps are resized (nearest) to the model's 128 px
    seg[60:200, 80:176] = SEG["skin"]
    seg[40:80, 70:186] = SEG["hair"]
    seg[200:256, 100:156] = SEG["neck"]
    save_segmentation(root / "map.png", seg)
    Image.fromarray(np.full((32, 32, 3), (200, 40, 40), np.uint8)).save(root / "ref.png")
    return root


def run(setup, *args):
    common = ["--checkpoint", str(setup / "ckpt"), "--size", "48", "--frames", "3", "--device", "cpu"]
    return main(["edit", *common, *args])


def test_edit_writes_reconstruct_outputs(setup, capsys):
    out = setup / "out_text"
    assert run(setup, "--seg", str(setup / "map.png"), "--style-text", "red hair", "-o", str(out)) == 0
    for name in PHOTO_FILES + ("segmentation.png", "segmentation_color.png", "edit.json"):
        assert (out / name).is_file(), name
    g = load_ply(out / "head.ply")
    assert len(g) == MapFitConfig.num_gaussians  # fitted to the map: densified
    info = json.loads((out / "edit.json").read_text())
    assert info["style"] == {"text": "red hair"} and info["segmentation"].startswith("file:")
    # how closely the head follows the map, measured from its camera, and the fit's record
    assert info["map_fit"]["ran"] and info["map_fit"]["steps"] == MapFitConfig.steps
    assert info["map_fit"]["label_l1_after"] < info["map_fit"]["label_l1_before"]
    fid = info["map_fidelity"]
    assert 0 <= fid["silhouette_iou"] <= 1 and set(fid["iou"]) == {"hair", "skin", "ears", "neck", "cloth"}
    assert "silhouette IoU" in capsys.readouterr().err
    assert load_segmentation(out / "segmentation.png").shape == (128, 128)
    assert not list(out.glob(".perchead-partial-*"))

    out2 = setup / "out_image"
    assert run(setup, "--seg", str(setup / "map.png"), "--style-image", str(setup / "ref.png"), "-o", str(out2)) == 0
    g2 = load_ply(out2 / "head.ply")
    assert not torch.allclose(g.sh, g2.sh)  # another style, other colours
    assert json.loads((out2 / "edit.json").read_text())["style"] == {"image": str(setup / "ref.png")}


def test_fit_steps_zero_is_the_network_alone(setup):
    out = setup / "out_nofit"
    assert run(setup, "--seg", str(setup / "map.png"), "--style-text", "red hair", "--fit-steps", "0", "--no-video",
               "-o", str(out)) == 0
    assert len(load_ply(out / "head.ply")) == preset("tiny").num_gaussians
    info = json.loads((out / "edit.json").read_text())
    assert info["map_fit"]["ran"] is False and info["map_fidelity"]["silhouette_iou"] is not None


def test_edit_from_photo_uses_the_offline_segmenter(setup):
    from perchead.inference.reconstruct import DEMO_CHECKPOINT

    photo = DEMO_CHECKPOINT.parent / "example_photo.jpg"
    out = setup / "out_photo"
    assert run(setup, "--from", str(photo), "--no-video", "-o", str(out)) == 0
    info = json.loads((out / "edit.json").read_text())
    assert info["segmentation"] == "mediapipe-facemesh+selfie" and info["style"]["matted"] is True
    labels = load_segmentation(out / "segmentation.png")
    assert {SEG["skin"], SEG["hair"], SEG["l_eye"]} <= set(np.unique(labels).tolist())


@pytest.mark.parametrize("args, message", [
    (["--style-text", "x"], "no geometry"),
    (["--seg", "MAP"], "no style"),
    (["--seg", "MAP", "--style-text", "x", "--style-image", "REF"], "one style"),
    (["--seg", "missing.png", "--style-text", "x"], "no such file"),
    (["--seg", "BAD", "--style-text", "x"], r"unknown label\(s\) \[30\]"),
    (["--seg", "WIDE", "--style-text", "x"], "must be square"),
])
def test_edit_errors(setup, capsys, args, message):
    Image.fromarray(np.full((8, 8), 30, np.uint8)).save(setup / "bad.png")
    Image.fromarray(np.ones((8, 10), np.uint8)).save(setup / "wide.png")
    subst = {"MAP": str(setup / "map.png"), "REF": str(setup / "ref.png"), "BAD": str(setup / "bad.png"),
             "WIDE": str(setup / "wide.png")}
    assert run(setup, *[subst.get(a, a) for a in args], "-o", str(setup / "err")) == 1
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (setup / "err").exists()

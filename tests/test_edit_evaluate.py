"""`perchead eval-edit`: held-out PSNR of (own map + own style) vs the mean-colour template, disentanglement."""

import json

import pytest
import torch

from perchead.cli import main
from perchead.data.synth import SynthConfig, generate
from perchead.edit import EditNetwork
from perchead.edit.evaluate import EditEvalConfig, disentanglement, evaluate_edit
from perchead.edit.fit import MapFitConfig
from perchead.edit.map_eval import MapEvalConfig
from perchead.eval.heldout import HeldoutConfig, evaluate_heldout
from perchead.losses import load_clip
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.train.testing import tiny_model_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_eval")
    generate(SynthConfig(subjects=3, views=4, size=32, surface_resolution=32, split_fractions=(0.0, 0.0, 1.0)),
             root / "data", progress=False)
    clip = load_clip(str(save_tiny_models(root / "models")["clip"]))
    torch.manual_seed(0)
    model = PercHead(tiny_model_config(56)).eval()
    net = EditNetwork.from_reconstruction(model, clip=clip).eval()
    net.save_pretrained(root / "edit")
    model.save_pretrained(root / "recon")
    return root, model, net


def test_rows_baseline_and_disentanglement(setup):
    root, model, net = setup
    fidelity = MapEvalConfig(subjects=2, grow_px=4, shrink_px=2, disentangle_subjects=2,
                             fit=MapFitConfig(steps=3, num_gaussians=0))
    cfg = EditEvalConfig(backend="cpu", disentangle_subjects=3, map_fidelity=fidelity)
    with torch.no_grad():
        result = evaluate_edit(net, root / "data", cfg, reconstruction=model, fidelity_figure=root / "fid.png")
    methods = {"template_mean_colour", "edit", "edit_sharpened", "reconstruction_sharpened"}
    novel = [s for s in result.summary if s["group"] == "novel"]
    assert {s["method"] for s in novel} == methods and all(s["subjects"] == 3 for s in novel)
    assert len({s["images"] for s in novel}) == 1  # every method scored on the same targets
    # the baseline is perchead.eval.heldout's, on the same pairs: the same numbers
    held = evaluate_heldout(model, root / "data", HeldoutConfig(backend="cpu"))
    ours = {s["group"]: s["psnr"] for s in result.summary if s["method"] == "template_mean_colour"}
    theirs = {s["group"]: s["psnr"] for s in held.summary if s["method"] == "template_mean_colour"}
    assert ours.keys() <= theirs.keys() and all(abs(ours[g] - theirs[g]) < 1e-6 for g in ours)
    d = result.disentanglement
    assert d["subjects"] == 3 and d["ordered_pairs"] == 6
    assert d["map_swap"]["position_m"] > 0 and d["style_swap"]["rgb"] > 0  # both inputs reach the output
    # map fidelity: every (subject, map, method) row, the edits' changes, the fitted disentanglement, a figure
    m = result.map_fidelity
    maps = {"unedited", "hair_grow_4px", "hair_shrink_2px", "hair_removed", "ears_hidden"}
    assert {(r["map"], r["method"]) for r in m["rows"]} == {(k, meth) for k in maps for meth in ("network", "fitted")}
    assert len(m["rows"]) == 2 * len(maps) * 2
    grow = next(r for r in m["rows"] if r["map"] == "hair_grow_4px")
    assert grow["painted_change"] > 0 and 0 <= grow["side_alpha_ratio"] <= 1.5
    assert all(r["silhouette_iou"] is None or 0 <= r["silhouette_iou"] <= 1 for r in m["rows"])
    assert m["fitted_disentanglement"]["ordered_pairs"] == 2
    assert (root / "fid.png").is_file()


def test_identical_inputs_change_nothing(setup):
    _, _, net = setup
    seg = torch.zeros(1, 56, 56, dtype=torch.long)
    seg[0, 10:46, 14:42] = 1
    image, mask = torch.rand(1, 3, 56, 56), (seg > 0).float()[:, None]
    with torch.no_grad():
        d = disentanglement(net, seg.expand(3, -1, -1), image.expand(3, -1, -1, -1), mask.expand(3, -1, -1, -1))
    assert d["style_swap"]["position_m"] == d["map_swap"]["position_m"] == 0.0
    with pytest.raises(ValueError, match="at least two"):
        disentanglement(net, seg, image, mask)


def test_cli_writes_json(setup, tmp_path, capsys):
    root, _, _ = setup
    code = main(["eval-edit", "--checkpoint", str(root / "edit"), "--data", str(root / "data"), "--out",
                 str(tmp_path / "e.json"), "--backend", "cpu", "--max-subjects", "2", "--disentangle-subjects", "2",
                 "--map-fidelity.subjects", "1", "--map-fidelity.disentangle-subjects", "2",
                 "--map-fidelity.fit.steps", "2", "--map-fidelity.fit.num-gaussians", "0"])
    assert code == 0
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["info"]["subjects"] == 2 and data["disentanglement"]["ordered_pairs"] == 2
    out = capsys.readouterr().out
    assert "style swap / map swap" in out and "| unedited | fitted |" in out
    assert data["map_fidelity"]["config"]["subjects"] == 1

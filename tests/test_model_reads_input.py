"""Issue 27: the training-free 2D branch, the switchable decoder changes, and a network that reads its input."""

from __future__ import annotations

import numpy as np
import torch

from perchead.model import PercHead, preset
from perchead.model.encoder import PatchStatsBranch
from perchead.train.testing import tiny_model_config, train_two_heads

FIXES = dict(stats_branch=True)


def test_stats_branch_is_deterministic_and_has_no_weights():
    cfg = preset("tiny", stats_branch=True)
    a, b = PatchStatsBranch(cfg), PatchStatsBranch(cfg)
    assert not list(a.parameters()) and not a.state_dict()  # nothing to train, store or download
    g = torch.Generator().manual_seed(0)
    side = cfg.patch_grid * cfg.patch_size
    rgb, mask = torch.rand(2, 3, side, side, generator=g), (torch.rand(2, 1, side, side, generator=g) > 0.3).float()
    fa, fb = a(rgb, mask), b(rgb, mask)
    assert fa.shape == (2, cfg.patch_grid**2, a.out_dim)
    assert torch.equal(fa, fb) and torch.equal(fa, a(rgb, mask))
    # A patch of one colour: its mean is that colour (mapped to [-1, 1]) and its deviation 0.
    rgb = torch.ones(1, 3, side, side) * torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    f = a(rgb, torch.ones(1, 1, side, side))
    assert torch.allclose(f[0, 0, :3], torch.tensor([-0.6, 0.0, 0.8]), atol=1e-5)
    assert torch.allclose(f[0, 0, 3:6], torch.zeros(3), atol=1e-3)
    # Only foreground pixels count: a white background around a red patch does not pale it.
    mask = torch.zeros(1, 1, side, side)
    mask[..., : cfg.patch_size // 2, :] = 1.0
    rgb = torch.ones(1, 3, side, side)
    rgb[:, 1:, : cfg.patch_size // 2] = 0.0
    assert torch.allclose(a(rgb, mask)[0, 0, :3], torch.tensor([1.0, -1.0, -1.0]), atol=1e-5)


def test_switches_off_keep_the_old_architecture_and_on_add_only_new_tensors():
    torch.manual_seed(0)
    old = PercHead(tiny_model_config()).trainable_state_dict()
    torch.manual_seed(0)
    same = PercHead(tiny_model_config(attn_init="small")).trainable_state_dict()
    assert old.keys() == same.keys() and all(torch.equal(old[k], same[k]) for k in old)
    new = PercHead(tiny_model_config(stats_branch=True, qk_norm=True, global_token=True)).trainable_state_dict()
    added = set(new) - set(old)
    assert added and all("q_norm" in k or "k_norm" in k for k in added)
    # The stats branch widens the fusion MLP's input and nothing else.
    assert {k for k in old if old[k].shape != new[k].shape} == {"encoder.fuse.0.weight", "encoder.fuse.0.bias",
                                                                "encoder.fuse.1.weight"}


def test_global_token_and_qk_norm_run_and_load(tmp_path):
    torch.manual_seed(0)
    model = PercHead(tiny_model_config(stats_branch=True, qk_norm=True, global_token=True)).eval()
    image, mask = torch.rand(2, 3, 56, 56), torch.zeros(2, 1, 56, 56)
    mask[0, :, 10:40, 10:40] = 1
    mask[1, :, 5:20, 20:50] = 1  # another foreground count: padded keys, the global token stays valid
    tokens = model.encode(image, mask)
    context, valid = model.context(tokens)
    assert context.shape[1] == tokens.tokens.shape[1] + 1 and bool(valid[:, -1].all())
    maps = model.decoder.attention_maps(context, valid, model.initial_tokens())
    assert torch.allclose(maps[0].sum(-1), torch.ones(()), atol=1e-5)
    assert float(maps[0][1, ..., :-1][..., ~valid[1, :-1]].abs().max()) == 0.0  # padding never read
    with torch.no_grad():
        before = model(image, mask)
        loaded = PercHead.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
        after = loaded(image, mask)
    assert torch.equal(before.means, after.means) and torch.equal(before.sh, after.sh)


def test_tiny_model_renders_each_heads_own_back_colour():
    colours, truth_gap = train_two_heads(**FIXES)
    gap = float((colours[0] - colours[1]).norm())
    darker = float(colours[1].mean() - colours[0].mean())
    # Measured (seed 0, 30 steps, 1 thread): back colours (0.60, 0.46, 0.35) and (0.77, 0.75, 0.68), RGB distance
    # 0.47 of the truths' 1.20, the light-haired head's back 0.26 lighter; bounds at half of those. The same run
    # without the stats branch: 0.27; attn_init "xavier": 0.39; both: 0.35. A model that ignored its input: 0.
    assert gap > 0.23, (gap, truth_gap, colours)
    assert darker > 0.13, colours


# -- the measure (perchead.eval.reads_input) --------------------------------------------------------------
def test_colour_summary_reports_delta_e_correlation_and_spread():
    from perchead.eval.reads_input import summarise_colour

    truths = [[30.0, 5.0, 10.0], [50.0, 10.0, 20.0], [70.0, 15.0, 30.0], [90.0, 20.0, 40.0]]
    rows = []
    for i, t in enumerate(truths):
        rows.append(dict(subject=str(i), view="back", cls="hair", method="copy", truth_lab=t,
                         pred_lab=[t[0] + 3.0, t[1], t[2] + 4.0], delta_e=5.0))
        rows.append(dict(subject=str(i), view="back", cls="hair", method="flat", truth_lab=t,
                         pred_lab=[60.0, 12.0, 25.0], delta_e=float(i)))
    out = {r["method"]: r for r in summarise_colour(rows)}
    assert out["copy"]["median_delta_e"] == 5.0 and out["flat"]["median_delta_e"] == 1.5
    assert abs(out["copy"]["corr_lab"] - 1.0) < 1e-9 and abs(out["copy"]["spread"] - 1.0) < 1e-9
    assert out["flat"]["spread"] == 0.0  # paints every head alike: no spread, whatever its delta E


def test_measure_on_a_toy_dataset(tmp_path):
    import pytest

    from perchead.eval.reads_input import format_tables, measure
    from perchead.train.testing import write_toy_dataset

    root = write_toy_dataset(tmp_path / "toy", subjects=2, views=4, size=32, val=0)
    torch.manual_seed(0)
    model = PercHead(tiny_model_config(image_size=32, shp_cnn=False))
    res = measure({"model": model}, root)
    methods = {r["method"] for r in res.psnr_rows}
    assert methods == {"model", "template_mean_colour", "silhouette_mean_colour"}
    assert len(res.psnr_rows) == 2 * 3 * 3  # 2 subjects x 3 targets (all but the input) x 3 methods
    assert {r["bucket"] for r in res.yaw_summary} >= {"60-105", "150-180"}
    assert res.colour_rows == []  # the toy views have no segmentation maps
    # the back view's lead over the flat silhouette, recomputed here from the rows (one back view a subject)
    back = {r["method"]: r for r in res.back_summary}
    assert set(back) == methods and all(r["subjects"] == 2 for r in back.values())
    psnr = {(r["subject"], r["method"]): r["psnr"] for r in res.psnr_rows if r["role"] == "back"}
    lead = np.array([psnr[s, "model"] - psnr[s, "silhouette_mean_colour"] for s in {s for s, _ in psnr}])
    assert back["model"]["lead"] == pytest.approx(lead.mean())
    assert back["model"]["lead_se"] == pytest.approx(lead.std(ddof=1) / np.sqrt(2))
    assert np.isnan(back["silhouette_mean_colour"]["lead"])
    assert "lead over silhouette_mean_colour" in format_tables(res)
    with pytest.raises(ValueError, match="no multi-view subject"):
        measure({"model": model}, root, split="test")


def test_colour_read_starts_at_the_input_colours_and_copies_them_after_training(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config(colour_read=True)
    model = PercHead(cfg).eval()
    # Untrained, every Gaussian reads a mix of the patches' own colours: an all-red input paints a red head
    # (the paper's colour head alone starts grey whatever the input). Measured: 0.0025 from it at most.
    image, mask = torch.zeros(1, 3, 56, 56), torch.zeros(1, 1, 56, 56)
    image[:, 0] = 0.9
    image[:, 1:] = 0.1
    mask[..., 8:48, 12:44] = 1
    with torch.no_grad():
        rgb = model(image, mask).rgb[0]
    assert float((rgb - torch.tensor([0.9, 0.1, 0.1])).abs().max()) < 0.1, rgb.mean(0)
    with torch.no_grad():
        loaded = PercHead.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
        assert torch.equal(loaded(image, mask).sh, model(image, mask).sh)
    colours, truth_gap = train_two_heads(colour_read=True)
    gap = float((colours[0] - colours[1]).norm())
    # Measured (seed 0, 30 steps, 1 thread): (0.24, 0.24, 0.22) and (0.93, 0.84, 0.55), RGB distance 0.97 of the
    # truths' 1.20 (the same network without colour_read: 0.27); the bound is 60% of it and still 2x the
    # network without it.
    assert gap > 0.58, (gap, truth_gap, colours)


def test_colour_read_weights_say_where_each_gaussian_reads():
    torch.manual_seed(0)
    model = PercHead(tiny_model_config(colour_read=True)).eval()
    image, mask = torch.rand(1, 3, 56, 56), torch.zeros(1, 1, 56, 56)
    mask[..., 8:48, 12:44] = 1
    seen = {}
    model.heads.colour_read.register_forward_hook(lambda mod, args, out: seen.update(args=args, read=out))
    with torch.no_grad():
        model(image, mask)
        latents, tokens = seen["args"]
        w = model.heads.colour_read.weights(latents, tokens)
    assert w.shape == (1, latents.shape[1], tokens.tokens.shape[1])
    # A distribution over the foreground tokens, and the colour it implies is the one the forward read.
    assert torch.allclose(w.sum(-1), torch.ones(1, latents.shape[1]), atol=1e-5)
    assert float(w[~tokens.valid[:, None, :].expand_as(w)].abs().sum()) == 0.0
    assert torch.allclose(w @ tokens.colours, seen["read"], atol=1e-5)

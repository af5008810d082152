"""Disentanglement is learned (as in the paper), not built in: a short fine-tuning where geometry follows the
map and colour follows the style makes a style change recolour the head while the Gaussians stay put, and a
map change move them. Random weights do not have this property (the first assertions show it).

Margins (style move / map move, the quantity bounded): on the two maps the fine-tuning saw, measured 0.02-0.05
against the bound 0.1. The third map ("unseen", between the two) was never trained on, so its style
invariance is only generalised, and it sits half-way between the other maps, so its map move is about half of
theirs: measured 0.16 on one 2-core AMD EPYC and below 0.1 on another (the summation order of the CPU kernels
differs), which failed the bound 0.1 there (issue 13). Its bound is 0.35: more than twice the worst measured
ratio, still a map change moving the Gaussians about three times more than a style change."""

import pytest
import torch

from perchead.edit import EditNetwork
from perchead.losses import load_clip
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.train.testing import tiny_model_config

SIZE = 56


def head_map(half_w: int, half_h: int) -> torch.Tensor:
    seg = torch.zeros(SIZE, SIZE, dtype=torch.long)
    c = SIZE // 2
    seg[c - half_h:c + half_h, c - half_w:c + half_w] = 1  # skin
    seg[c - half_h:c - half_h + 5, c - half_w:c + half_w] = 17  # hair on top
    return seg


def solid(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 40, 40)


@pytest.fixture()
def one_thread():
    """One thread and torch's deterministic kernels: the same summation order wherever the test runs (a few
    ms per step on one core; several threads on a shared 2-core machine are many times slower)."""
    n, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(n)


def test_finetuned_style_recolours_and_map_reshapes(tmp_path, one_thread):
    torch.manual_seed(0)
    clip = load_clip(str(save_tiny_models(tmp_path)["clip"]))
    net = EditNetwork.from_reconstruction(PercHead(tiny_model_config(SIZE)), clip=clip)
    maps = {"narrow": head_map(12, 18), "wide": head_map(20, 14), "unseen": head_map(16, 16)}
    colours = {"red": [0.9, 0.2, 0.1], "blue": [0.1, 0.3, 0.9]}
    # styles through the real path: CLIP image embeddings of reference images
    styles = {k: net.style_from_image(solid(c)) for k, c in colours.items()}
    anchors, _ = net.template.points()
    s_max = float(net.heads.s_max_m)
    # each map has its own shape (a per-map offset of every Gaussian within the position head's range)
    offsets = {"narrow": torch.tensor([-0.6, 0.5, 0.0]) * s_max, "wide": torch.tensor([0.6, -0.5, 0.3]) * s_max}

    def outputs():
        with torch.no_grad():
            return {(m, s): net.generate(maps[m][None], styles[s])[0] for m in maps for s in styles}

    def moved(a, b):  # mean Gaussian displacement, metres
        return float((a.means - b.means).norm(dim=-1).mean())

    def recoloured(a, b):
        return float((a.rgb - b.rgb).abs().mean())

    before = outputs()
    train = [(m, s) for m in offsets for s in styles]  # every (map, style) pair of the two seen maps
    seg = torch.stack([maps[m] for m, _ in train])
    style = torch.cat([styles[s] for _, s in train])
    target_pos = torch.stack([anchors + offsets[m] for m, _ in train])
    target_rgb = torch.stack([torch.tensor(colours[s]).expand_as(anchors) for _, s in train])
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(300):
        g = net.generate(seg, style)
        loss = ((g.means - target_pos) ** 2).mean() / s_max**2 + ((g.rgb - target_rgb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    after = outputs()

    # Random weights: a style change barely recolours (nothing disentangled to speak of yet).
    assert recoloured(before["narrow", "red"], before["narrow", "blue"]) < 0.05
    for m, bound in (("narrow", 0.1), ("wide", 0.1), ("unseen", 0.35)):
        style_move = moved(after[m, "red"], after[m, "blue"])
        map_move = moved(after[m, "red"], after["wide" if m == "narrow" else "narrow", "red"])
        # style change with the map fixed: colours change, Gaussians stay (far less than a map change)
        assert recoloured(after[m, "red"], after[m, "blue"]) > 0.3, m
        assert style_move < bound * map_move, (m, style_move, map_move)
    # map change with the style fixed: geometry changes, colour stays
    assert moved(after["narrow", "blue"], after["wide", "blue"]) > 0.5 * s_max
    assert recoloured(after["narrow", "blue"], after["wide", "blue"]) < 0.1

"""Disentanglement is learned (as in the paper), not built in: a short fine-tuning where geometry follows the
map and colour follows the style makes a style change recolour the head while the Gaussians stay put, and a
map change move them, also on a map the fine-tuning never saw. Random weights do not have this property (the
first assertion shows it)."""

from __future__ import annotations

import pytest
import torch

from perchead.edit import EditNetwork
from perchead.losses import load_clip
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.train.testing import tiny_model_config
from perchead.train.trainer import lr_lambda

pytestmark = pytest.mark.usefixtures("deterministic")

SIZE = 56
# A family of head maps (half width, half height in px), from narrow and tall to wide and flat. The middle
# one is held out of the fine-tuning: the "unseen" map.
FAMILY = [(12, 18), (13, 18), (14, 17), (15, 16), (16, 16), (17, 16), (18, 15), (19, 14), (20, 14)]
NARROW, UNSEEN, WIDE = FAMILY[0], FAMILY[4], FAMILY[-1]
COLOURS = {"red": [0.9, 0.2, 0.1], "blue": [0.1, 0.3, 0.9]}
STEPS = 900
BATCH = 8


def head_map(half_w: int, half_h: int) -> torch.Tensor:
    seg = torch.zeros(SIZE, SIZE, dtype=torch.long)
    c = SIZE // 2
    seg[c - half_h:c + half_h, c - half_w:c + half_w] = 1  # skin
    seg[c - half_h:c - half_h + 5, c - half_w:c + half_w] = 17  # hair on top
    return seg


def shape_offset(half_w: int, half_h: int, s_max: float) -> torch.Tensor:
    """The map's shape -> one offset of every Gaussian (metres, within the position head's range): a smooth
    (linear) function of width and height, from ``a`` for the narrow map to ``b`` for the wide one."""
    t = ((half_w - 12) / 8 + (18 - half_h) / 4) / 2
    a, b = torch.tensor([-0.6, 0.5, 0.0]), torch.tensor([0.6, -0.5, 0.3])
    return (a + (b - a) * t) * s_max


def solid(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 40, 40)


def finetune_and_measure(tmp_path, seed: int = 0) -> dict[str, float]:
    """Fine-tune a random tiny editing network on the family (all but the unseen map, both styles) and return
    what the test checks. Moves are mean Gaussian displacements in units of s_max, recolours mean abs RGB.

    The setting is chosen so the fit converges on every seed tried (0-9) and on AVX2 and AVX-512 kernels:
    - 32 latent channels per Gaussian (the tiny test config has 8): with 8, position and colour compete for
      them and about half the seeds left the geometry at the mean of the targets (the map ignored);
    - the trainer's optimiser recipe (AdamW betas (0.9, 0.95), warm-up then cosine, gradient norm clipped
      to 1): with plain AdamW, loss spikes in the style/map fusion layer threw away what had been learned;
    - the new segmentation + style encoder at a lower learning rate (2e-4) than the shared decoder and heads
      (1e-3): at 1e-3 its fusion MLP learned the style within 50 steps by washing the map out of its tokens
      (their spread over the family's maps fell 20x), and on 1-2 seeds in 10 the geometry never recovered;
    - eight training maps whose offset is a smooth function of the shape, so that the unseen map sits between
      seen ones and following it is a real generalisation (with only the two end maps the unseen map's
      style-invariance was left to chance: style / map move 0.005-1.1 over seeds and CPU kernels).
    """
    clip = load_clip(str(save_tiny_models(tmp_path)["clip"]))
    torch.manual_seed(seed)
    net = EditNetwork.from_reconstruction(PercHead(tiny_model_config(SIZE, gaussian_latent=32)), clip=clip)
    anchors, _ = net.template.points()
    s_max = float(net.heads.s_max_m)
    # styles through the real path: CLIP image embeddings of reference images
    styles = {k: net.style_from_image(solid(c)) for k, c in COLOURS.items()}
    maps = {shape: head_map(*shape) for shape in FAMILY}

    def generate(shape, style: str):
        with torch.no_grad():
            return net.generate(maps[shape][None], styles[style])[0]

    def moved(a, b) -> float:
        return float((a.means - b.means).norm(dim=-1).mean()) / s_max

    def recoloured(a, b) -> float:
        return float((a.rgb - b.rgb).abs().mean())

    out: dict[str, float] = {"recolour_random_weights": recoloured(generate(NARROW, "red"), generate(NARROW, "blue"))}

    pairs = [(shape, style) for shape in FAMILY if shape != UNSEEN for style in COLOURS]

    def batch_loss(batch):
        g = net.generate(torch.stack([maps[m] for m, _ in batch]), torch.cat([styles[s] for _, s in batch]))
        target_pos = torch.stack([anchors + shape_offset(*m, s_max) for m, _ in batch])
        target_rgb = torch.stack([torch.tensor(COLOURS[s]).expand_as(anchors) for _, s in batch])
        return ((g.means - target_pos) ** 2).mean() / s_max**2 + ((g.rgb - target_rgb) ** 2).mean()

    params = [p for p in net.parameters() if p.requires_grad]
    encoder = [p for name, p in net.named_parameters() if p.requires_grad and name.startswith("encoder.")]
    shared = [p for name, p in net.named_parameters() if p.requires_grad and not name.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": encoder, "lr": 2e-4}, {"params": shared, "lr": 1e-3}], betas=(0.9, 0.95))
    warmup = 30
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_lambda(i, warmup, STEPS, 0.0))
    order = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        loss = batch_loss([pairs[j] for j in torch.randperm(len(pairs), generator=order)[:BATCH].tolist()])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    with torch.no_grad():
        out["final_loss"] = float(batch_loss(pairs))

    for name, shape in (("narrow", NARROW), ("wide", WIDE), ("unseen", UNSEEN)):
        red, blue = generate(shape, "red"), generate(shape, "blue")
        far = WIDE if shape == NARROW else NARROW  # unseen: 0.80 s_max of target offset away, the ends 1.59
        out[f"{name}_style_move"] = moved(red, blue)
        out[f"{name}_map_move"] = moved(red, generate(far, "red"))
        out[f"{name}_recolour"] = recoloured(red, blue)
    red = generate(UNSEEN, "red")
    out["unseen_target_error"] = float((red.means - anchors - shape_offset(*UNSEEN, s_max)).norm(dim=-1).mean()) / s_max
    out["map_change_move"] = moved(generate(NARROW, "blue"), generate(WIDE, "blue"))
    out["map_change_recolour"] = recoloured(generate(NARROW, "blue"), generate(WIDE, "blue"))
    return out


def test_finetuned_style_recolours_and_map_reshapes(tmp_path):
    """Margins, measured by running ``finetune_and_measure`` on seeds 0-4, one thread, with
    the default (AVX-512) and ``ATEN_CPU_CAPABILITY=avx2`` kernels (worst case; the test's seed 0 in brackets):
    - a style change moves the Gaussians far less than a map change: style / map move <= 0.022 (0.014 /
      0.022 for the two kernels) for the end maps, bound 0.1; for the unseen map <= 0.069 (0.004 / 0.069),
      bound 0.25: its style invariance was never trained, only generalised, and it is the number that moves
      most between kernels (issue 13), so its bound keeps 3.6x the worst measured value;
    - the unseen map's geometry follows its shape: mean distance to its target <= 0.082 (0.015) s_max, where
      the nearest end map's target is 0.80 s_max away; bound 0.2;
    - a style change recolours: >= 0.548 (0.549) mean abs RGB; bound 0.3 (random weights: bound 0.05);
    - a map change with the style fixed moves the Gaussians >= 1.54 (1.54) s_max; bound 0.5; the fit's final
      loss <= 2e-4; bound 0.05.
    """
    m = finetune_and_measure(tmp_path)
    # Random weights: a style change barely recolours (nothing disentangled to speak of yet).
    assert m["recolour_random_weights"] < 0.05, m
    assert m["final_loss"] < 0.05, m
    for name, bound in (("narrow", 0.1), ("wide", 0.1), ("unseen", 0.25)):
        # style change with the map fixed: colours change, Gaussians stay (far less than a map change)
        assert m[f"{name}_recolour"] > 0.3, (name, m)
        assert m[f"{name}_style_move"] < bound * m[f"{name}_map_move"], (name, m)
    # the map the fine-tuning never saw gets the geometry its shape implies
    assert m["unseen_target_error"] < 0.2, m
    # map change with the style fixed: geometry changes, colour stays
    assert m["map_change_move"] > 0.5, m
    assert m["map_change_recolour"] < 0.1, m

"""Tiny datasets and models for tests and smoke runs of the trainer (seconds on a CPU).

The heads here are clouds of coloured Gaussians on the built-in template's surface, rendered from an orbit
of cameras with the project's rasterizer and written in perchead's dataset format, so the trainer reads them
through exactly the code path real data takes. For realistic synthetic heads use `perchead synth`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from perchead.data.format import ViewData, write_index, write_subject
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, Gaussians
from perchead.model import ModelConfig, preset
from perchead.model.template import HeadTemplate
from perchead.render import rasterize


def tiny_model_config(image_size: int = 56, **overrides) -> ModelConfig:
    """The ``tiny`` preset shrunk further (32x32 template = 1,024 Gaussians, 2 decoder layers): a training
    step takes well under a second on one CPU core at 32-64 px."""
    cfg = dict(image_size=image_size, template_resolution=32, vit_width=64, vit_depth=2, vit_heads=2,
               f2d_width=64, width=64, heads=4, layers=2, gaussian_latent=8, shp_channels=8, shp_blocks=1)
    cfg.update(overrides)
    return preset("tiny", **cfg)


def toy_head(seed: int, resolution: int = 32) -> Gaussians:
    """A head-shaped Gaussian cloud with per-subject colours (skin front, a hair colour at the back)."""
    g = torch.Generator().manual_seed(seed)
    template = HeadTemplate.builtin(resolution)
    xyz = template.xyz.reshape(-1, 3)
    n = xyz.shape[0]
    skin = torch.rand(3, generator=g) * 0.5 + 0.4
    hair = torch.rand(3, generator=g) * 0.6
    back = (xyz[:, 2] < torch.rand(1, generator=g) * 0.05).float()[:, None]
    rgb = skin * (1 - back) + hair * back + 0.05 * torch.randn(n, 3, generator=g)
    spacing = float((xyz.max(0).values - xyz.min(0).values).max()) / resolution
    return Gaussians.from_activated(
        xyz, torch.full((n, 3), spacing * 0.8), torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4),
        torch.full((n,), 0.9), rgb.clamp(0, 1))


def write_toy_dataset(root: str | Path, subjects: int = 3, views: int = 4, size: int = 32, seed: int = 0,
                      wild: int = 0, val: int = 1) -> Path:
    """``subjects`` multi-view ("studio") subjects with ``views`` cameras evenly around the head (the first
    ``val`` of them in the val split), plus ``wild`` single-view ones."""
    root = Path(root)
    records = []
    for i in range(subjects + wild):
        kind = "studio" if i < subjects else "wild"
        split = "val" if i < val else "train"
        head = toy_head(seed * 1000 + i)
        yaws = [0.0] if kind == "wild" else [360.0 * k / views for k in range(views)]
        cams = Cameras.orbit(yaws, 5.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, size)
        out = rasterize(head, cams.viewmats, cams.Ks, size, size, background=0.0)
        items = []
        for v, yaw in enumerate(yaws):
            # Rendered on black, the colour is premultiplied by alpha; the format stores straight colour.
            straight = out.rgb[v] / out.alpha[v].clamp_min(1e-3)
            rgba = torch.cat([straight, out.alpha[v]], dim=-1).clamp(0, 1).numpy()
            face = abs(((yaw + 180.0) % 360.0) - 180.0) <= 100.0
            items.append(ViewData(f"view{v:02d}", cams.Ks[v], cams.viewmats[v],
                                  rgba=(rgba * 255 + 0.5).astype(np.uint8),
                                  extra={"yaw_deg": float(yaw), "pitch_deg": 5.0, "face_visible": face}))
        records.append(write_subject(root / "subjects" / f"toy{i:03d}", f"toy{i:03d}", kind, split, items))
    write_index(root, records, {"generator": "perchead.train.testing.write_toy_dataset"})
    return root


# -- issue 27: a tiny network trained on two heads that differ only in hair colour --------------------------
def hair_head(hair: tuple[float, float, float], resolution: int = 32) -> Gaussians:
    """Template-surface head: skin face, hair over the back half and the top (so the frontal input shows it)."""
    template = HeadTemplate.builtin(resolution)
    xyz = template.xyz.reshape(-1, 3)
    centre = template.center()
    rel = xyz - centre
    is_hair = (rel[:, 2] < 0) | (rel[:, 1] > 0.45 * float(rel[:, 1].max()))
    skin = torch.tensor([0.85, 0.65, 0.55])
    rgb = torch.where(is_hair[:, None], torch.tensor(hair), skin)
    n = xyz.shape[0]
    spacing = float((xyz.max(0).values - xyz.min(0).values).max()) / resolution
    return Gaussians.from_activated(xyz, torch.full((n, 3), spacing * 0.8),
                                    torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4), torch.full((n,), 0.95), rgb)


def train_two_heads(steps: int = 30, size: int = 32, seed: int = 0, **overrides) -> tuple[torch.Tensor, float]:
    """Train a tiny model on a dark- and a light-haired head (frontal input; front and back supervised).
    Two views keep it to seconds: the CPU rasterizer's backward is most of a step. Returns the back view's
    mean rendered colour of each head [2, 3] and the truths' distance."""
    torch.manual_seed(seed)
    from perchead.model import PercHead

    model = PercHead(tiny_model_config(image_size=size, s_max=0.15, shp_cnn=False, **overrides))
    heads = [hair_head((0.12, 0.08, 0.05)), hair_head((0.95, 0.85, 0.55))]
    cams = Cameras.orbit([0.0, 180.0], 5.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, size)
    with torch.no_grad():
        truth = [rasterize(h, cams.viewmats, cams.Ks, size, size, background=1.0) for h in heads]
    images = torch.stack([t.rgb[0].permute(2, 0, 1) for t in truth])
    masks = torch.stack([t.alpha[0].permute(2, 0, 1) for t in truth])
    targets = torch.stack([t.rgb for t in truth])  # [2, V, H, W, 3]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        g = model(images, masks)
        pred = rasterize(g, cams.viewmats[None].expand(2, -1, -1, -1), cams.Ks[None].expand(2, -1, -1, -1),
                         size, size, background=1.0).rgb
        loss = (pred - targets).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        g = model.eval()(images, masks)
        back = rasterize(g, cams.viewmats[-1:][None].expand(2, -1, -1, -1), cams.Ks[-1:][None].expand(2, -1, -1, -1),
                         size, size, background=1.0).rgb[:, 0]
    sel = truth[0].alpha[-1, ..., 0] > 0.5  # both heads share their silhouette
    colours = torch.stack([b[sel].mean(0) for b in back])
    truth_gap = float((targets[0, -1][sel].mean(0) - targets[1, -1][sel].mean(0)).norm())
    return colours, truth_gap


def ddp_worker(rank: int, world_size: int, port: int, config_json: str, dump_dir: str) -> None:
    """One process of a CPU/gloo DDP test run (for ``torch.multiprocessing.spawn``): sets the variables
    torchrun would, builds the model from a rank-dependent seed (so only DDP can make the ranks agree),
    trains, and writes this rank's final weights to ``dump_dir/rank<r>.safetensors``."""
    import json
    import os

    from safetensors.torch import save_file

    from perchead.model import PercHead

    from .config import TrainConfig
    from .trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(config_json))
    torch.manual_seed(1234 + rank)
    model = PercHead(cfg.model)
    Trainer(cfg, model=model).run()
    tensors = {k: v.detach().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(tensors, str(Path(dump_dir) / f"rank{rank}.safetensors"))


__all__ = ["ddp_worker", "hair_head", "tiny_model_config", "toy_head", "train_two_heads", "write_toy_dataset"]

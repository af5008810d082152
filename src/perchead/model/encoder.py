"""Dual-branch 2D encoder: trainable ViT + frozen multi-layer DINOv2, fused per patch, foreground only.

Input: an RGB crop in [0, 1] and its foreground mask. The image is composited onto the background colour
with the mask (the paper's inputs are matted), padded with background up to a multiple of the patch size
(512 -> 518 px, 37x37 patches) and normalised with ImageNet statistics. Patches without a single foreground
pixel are dropped *before* the trainable ViT (so its cost scales with the head, not the crop) and from the
DINOv2 features; batch items with different foreground counts are padded and carry a key mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DINOV2_ARCHS, ModelConfig
from .layers import SelfAttentionBlock, fourier_features, init_linear

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageTokens:
    """Foreground patch tokens of a batch, padded to the largest count."""

    tokens: Tensor  # [B, M, C] F2D
    valid: Tensor  # [B, M] bool, False for padding
    patch_index: Tensor  # [B, M] long, row-major index into the patch grid (padding: arbitrary)
    global_token: Tensor | None = None  # [B, 1, C] image-level token (config global_token), always valid
    colours: Tensor | None = None  # [B, M, 3] mean foreground RGB in [0, 1] per token (config colour_read)


# -- DINOv2 ------------------------------------------------------------------------------------------------
def dinov2_config(name_or_path: str):
    """The transformers config of a DINOv2: read from a local folder, or from :data:`DINOV2_ARCHS` for a
    known hub id (so no download is needed to count parameters or build a random stand-in)."""
    from transformers import AutoConfig, Dinov2Config, Dinov2WithRegistersConfig

    if Path(name_or_path).is_dir():
        return AutoConfig.from_pretrained(name_or_path)
    if name_or_path in DINOV2_ARCHS:
        arch = dict(DINOV2_ARCHS[name_or_path])
        cls = Dinov2WithRegistersConfig if "num_register_tokens" in arch else Dinov2Config
        return cls(patch_size=14, image_size=518, mlp_ratio=4, layerscale_value=1.0, **arch)
    return AutoConfig.from_pretrained(name_or_path)


def dinov2_from_config(config, device: str | torch.device | None = None) -> nn.Module:
    """A DINOv2 with RANDOM weights of the given architecture: for parameter counts ("meta" device) and
    benchmarks only, never for a model meant to produce results."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    cls = Dinov2WithRegistersModel if config.model_type == "dinov2_with_registers" else Dinov2Model
    with torch.device(device or "cpu"):
        return cls(config)


def load_dinov2(name_or_path: str) -> nn.Module:
    """Pretrained DINOv2 (with or without registers) from a hub id or a local folder; a clear error when the
    weights are not there -- never random weights."""
    from transformers import AutoModel

    try:
        # float32 whatever the file stores; callers may cast the whole model afterwards.
        model, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"cannot load DINOv2 weights '{name_or_path}': {exc}\n"
            "Download them once with internet (huggingface-cli download <id>) or pass a local folder "
            "holding config.json + model.safetensors; or build a model without the DINOv2 branch "
            "(config dino=None, e.g. the 'tiny' preset).") from exc
    if model.config.model_type not in ("dinov2", "dinov2_with_registers"):
        raise ValueError(f"'{name_or_path}' is a {model.config.model_type} model, not DINOv2")
    missing = info.get("missing_keys") or []
    if missing:
        raise RuntimeError(f"DINOv2 checkpoint '{name_or_path}' lacks {len(missing)} weight(s) "
                           f"(e.g. {sorted(missing)[:3]}): they would be random; refusing to use it")
    return model


class DinoBranch(nn.Module):
    """Frozen DINOv2: outputs of the chosen blocks after the final LayerNorm (as DINOv2's own
    ``get_intermediate_layers(norm=True)``), CLS and register tokens dropped, concatenated per patch."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...], patch_size: int) -> None:
        super().__init__()
        cfg = model.config
        if cfg.patch_size != patch_size:
            raise ValueError(f"DINOv2 patch size {cfg.patch_size} differs from the model's {patch_size}")
        bad = [i for i in layers if not 0 <= i < cfg.num_hidden_layers]
        if bad:
            raise ValueError(f"dino_layers {bad} out of range: this DINOv2 has {cfg.num_hidden_layers} "
                             "blocks (ViT-S/B: 2,5,8,11; ViT-L: 4,11,17,23; ViT-g: 9,19,29,39)")
        self.model = model
        self.layers = tuple(layers)
        self.skip = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.out_dim = cfg.hidden_size * len(layers)
        self.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> DinoBranch:
        # Frozen: stays in eval mode whatever the rest of the network does.
        super().train(False)
        return self

    def forward(self, pixels: Tensor) -> Tensor:
        """[B, 3, H, W] normalised pixels -> [B, P, L * C] patch features, P row-major."""
        with torch.no_grad():
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            # hidden_states[0] is the embedding output, hidden_states[i + 1] the output of block i.
            feats = [self.model.layernorm(out.hidden_states[i + 1])[:, self.skip:] for i in self.layers]
            return torch.cat(feats, dim=-1)


# -- training-free branch ---------------------------------------------------------------------------------
class PatchStatsBranch(nn.Module):
    """Fixed per-patch features with no weights: what a patch looks like and where it is.

    Per patch: mean and standard deviation of the RGB of its foreground pixels, the mean RGB of each of its
    2x2 sub-cells (mask-weighted), its foreground fraction, and Fourier features of its centre in [-1, 1]^2.
    Colours are mapped to [-1, 1]. A pure function of the composited image and the mask: deterministic and
    nothing to download, so every preset keeps two branches (the DINOv2 branch's role where no DINOv2
    weights exist). It hands the decoder the input's colours at each position directly, which a trainable ViT
    must otherwise learn to pass through (issue 27).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.grid = cfg.patch_grid
        self.num_freqs = cfg.stats_freqs
        self.out_dim = 3 + 3 + 12 + 1 + 2 * (1 + 2 * cfg.stats_freqs)
        centres = (torch.arange(self.grid, dtype=torch.float32) + 0.5) / self.grid * 2.0 - 1.0
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("centres", torch.stack([xx, yy], -1).reshape(-1, 2), persistent=False)

    @staticmethod
    def weighted_mean(x: Tensor, w: Tensor, size: int) -> Tensor:
        """Mask-weighted mean of ``x`` over the cells of a ``size`` x ``size`` grid; plain mean where a cell
        has no foreground (such patches are dropped later, this only keeps the numbers finite)."""
        num = F.adaptive_avg_pool2d(x * w, size)
        den = F.adaptive_avg_pool2d(w, size)
        plain = F.adaptive_avg_pool2d(x, size)
        return torch.where(den > 1e-6, num / den.clamp_min(1e-6), plain)

    def forward(self, rgb: Tensor, mask: Tensor) -> Tensor:
        """rgb [B, 3, S', S'] composited in [0, 1], mask [B, 1, S', S'] (both padded to whole patches)
        -> [B, P, out_dim], P row-major."""
        g = self.grid
        mean = self.weighted_mean(rgb, mask, g)
        # Deviations from the patch's own mean (not E[x^2] - E[x]^2, whose rounding the sqrt would amplify).
        p = self.patch_size
        centred = rgb - mean.repeat_interleave(p, -1).repeat_interleave(p, -2)
        var = self.weighted_mean(centred * centred, mask, g)
        sub = self.weighted_mean(rgb, mask, 2 * g)  # [B, 3, 2g, 2g]
        sub = sub.view(rgb.shape[0], 3, g, 2, g, 2).permute(0, 1, 3, 5, 2, 4).reshape(rgb.shape[0], 12, g, g)
        frac = F.adaptive_avg_pool2d(mask, g)
        feats = torch.cat([mean * 2 - 1, var.sqrt() * 2, sub * 2 - 1, frac * 2 - 1], 1).flatten(2).transpose(1, 2)
        pos = fourier_features(self.centres.to(rgb.dtype), self.num_freqs)
        return torch.cat([feats, pos.expand(rgb.shape[0], -1, -1)], -1)


# -- trainable ViT -------------------------------------------------------------------------------------------
class PatchViT(nn.Module):
    """Plain pre-norm ViT on the foreground patches only (padding masked in self-attention)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.vit_width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patch_grid**2, cfg.vit_width))
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg.vit_width, cfg.vit_heads)
                                    for _ in range(cfg.vit_depth))
        self.norm = nn.LayerNorm(cfg.vit_width)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, pixels: Tensor, patch_index: Tensor, valid: Tensor) -> Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2) + self.pos_embed  # [B, P, C]
        x = _kept(x, patch_index)
        for block in self.blocks:
            x = block(x, key_mask=valid)
        return self.norm(x)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, dino: nn.Module | None = None) -> None:
        """``dino``: a DINOv2 module to use instead of loading ``cfg.dino`` (tests / benchmarks); ignored
        when ``cfg.dino`` is None."""
        super().__init__()
        self.cfg = cfg
        self.vit = PatchViT(cfg)
        self.dino: DinoBranch | None = None
        in_dim = cfg.vit_width
        if cfg.dino is not None:
            self.dino = DinoBranch(dino if dino is not None else load_dinov2(cfg.dino), cfg.dino_layers,
                                   cfg.patch_size)
            in_dim += self.dino.out_dim
        self.stats: PatchStatsBranch | None = None
        if cfg.stats_branch:
            self.stats = PatchStatsBranch(cfg)
            in_dim += self.stats.out_dim
        self.fuse = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.f2d_width), nn.GELU(),
                                  nn.Linear(cfg.f2d_width, cfg.f2d_width), nn.LayerNorm(cfg.f2d_width))
        self.vit.blocks.apply(init_linear)
        self.fuse.apply(init_linear)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # -- input handling ---------------------------------------------------------------------------------
    def prepare(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Validate, composite onto the background, pad to whole patches, normalise.
        Returns (pixels [B,3,S',S'], foreground patch flags [B, P])."""
        cfg = self.cfg
        s = cfg.image_size
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != (s, s):
            raise ValueError(f"image must be [B, 3, {s}, {s}] (RGB in [0, 1]) for the '{cfg.preset}' preset; "
                             f"got {tuple(image.shape)}")
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        if mask.shape != (image.shape[0], 1, s, s):
            raise ValueError(f"mask must be [B, 1, {s}, {s}] or [B, {s}, {s}]; got {tuple(mask.shape)}")
        mask = mask.to(image.dtype)
        image = image * mask + cfg.background * (1.0 - mask)
        lo, hi = cfg.patch_padding
        image = F.pad(image, (lo, hi, lo, hi), value=cfg.background)
        mask = F.pad(mask, (lo, hi, lo, hi), value=0.0)
        fg = F.max_pool2d((mask > cfg.fg_threshold).to(image.dtype), cfg.patch_size).flatten(1) > 0
        return (image - self.mean) / self.std, fg

    @staticmethod
    def select_foreground(fg: Tensor) -> tuple[Tensor, Tensor]:
        """Foreground patch indices first (in row-major order), padded to the batch's largest count."""
        counts = fg.sum(1)
        if bool((counts == 0).any()):
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"the mask of batch item(s) {empty} has no foreground pixel: nothing to encode")
        m = int(counts.max())
        order = torch.argsort((~fg).to(torch.int8), dim=1, stable=True)[:, :m]
        valid = torch.arange(m, device=fg.device)[None, :] < counts[:, None]
        return order, valid

    def forward(self, image: Tensor, mask: Tensor) -> ImageTokens:
        pixels, fg = self.prepare(image, mask)
        index, valid = self.select_foreground(fg)
        feats = [self.vit(pixels, index, valid)]
        if self.dino is not None:
            feats.append(_kept(self.dino(pixels), index))
        if self.stats is not None or self.cfg.colour_read:
            # The composited colours and the mask, padded like the pixels: what the colour features read.
            lo, hi = self.cfg.patch_padding
            rgb = pixels * self.std + self.mean
            m = F.pad(mask if mask.ndim == 4 else mask.unsqueeze(1), (lo, hi, lo, hi)).to(pixels.dtype)
        if self.stats is not None:
            feats.append(_kept(self.stats(rgb, m), index))
        feats = torch.cat(feats, dim=-1)
        tokens = self.fuse(feats) * valid[..., None]
        glob = None
        if self.cfg.global_token:
            w = valid[..., None].to(feats.dtype)
            glob = self.fuse((feats * w).sum(1, keepdim=True) / w.sum(1, keepdim=True))
        colours = None
        if self.cfg.colour_read:
            colours = _kept(PatchStatsBranch.weighted_mean(rgb, m, self.cfg.patch_grid).flatten(2).transpose(1, 2),
                            index)
        return ImageTokens(tokens, valid, index, glob, colours)


def _kept(per_patch: Tensor, index: Tensor) -> Tensor:
    """[B, P, C] features of every patch (row-major) -> [B, M, C] those of the kept patches ``index``."""
    return torch.gather(per_patch, 1, index[..., None].expand(-1, -1, per_patch.shape[-1]))

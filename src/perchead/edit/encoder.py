"""Editing encoder: 19-class segmentation map (geometry) + one CLIP embedding (style) -> F2D tokens.

The map is one-hot encoded (19 channels), padded with background to whole 14 px patches like the image
encoder's input, patch-embedded and run through a plain ViT (the image encoder's :class:`PatchViT` with a
19-channel patch embedding) on the patches that hold at least one non-background pixel. Each kept token is
concatenated with the same global CLIP embedding, and an MLP turns the pair into the decoder's F2D width
(docs/design.md section 2, editing row). The decoder and Gaussian heads stay those of the reconstruction model.

With a ``colour_read`` model (whose Gaussian heads read their colours from the 2D tokens' ``colours``, a photo's
patch colours in reconstruction) each kept token also predicts a colour from its fused feature -- what its
class looks like in this style -- and the heads read those instead of a photo's: the style reaches the colours
through two layers rather than the whole decoder (issue 31: without it, the demo learnt lightness but not hue).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.losses.foundation import DEFAULT_CLIP
from perchead.model import ImageEncoder, ImageTokens, ModelConfig
from perchead.model.encoder import PatchViT
from perchead.model.layers import init_linear

from .segmentation import NUM_CLASSES, validate_segmentation


@dataclass
class EditConfig:
    """What the editing encoder adds to a :class:`~perchead.model.ModelConfig`."""

    clip: str = DEFAULT_CLIP
    """CLIP hub id or local folder whose image / text embeddings are the style (frozen, not stored)"""
    clip_dim: int = 512
    """CLIP projection dimension (512 for ViT-B/32 and ViT-B/16, 768 for ViT-L/14)"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditConfig:
        unknown = sorted(set(data) - {"clip", "clip_dim"})
        if unknown:
            raise ValueError(f"edit config has unknown field(s) {unknown}: written by a newer perchead?")
        return cls(**data)


class SegStyleEncoder(nn.Module):
    """(segmentation [B, S, S] class ids, style [B, D]) -> :class:`ImageTokens` of the map's foreground."""

    def __init__(self, cfg: ModelConfig, edit: EditConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.edit = edit
        # The image encoder's ViT, with a patch embedding for 19 one-hot channels instead of RGB.
        self.vit = PatchViT(cfg)
        self.vit.patch_embed = nn.Conv2d(NUM_CLASSES, cfg.vit_width, cfg.patch_size, stride=cfg.patch_size)
        in_dim = cfg.vit_width + edit.clip_dim
        self.fuse = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.f2d_width), nn.GELU(),
                                  nn.Linear(cfg.f2d_width, cfg.f2d_width), nn.LayerNorm(cfg.f2d_width))
        self.vit.blocks.apply(init_linear)
        self.fuse.apply(init_linear)
        # Starts grey: the heads' colour read then adds nothing until the style has shaped the tokens' colours.
        self.colour = nn.Linear(cfg.f2d_width, 3) if cfg.colour_read else None
        if self.colour is not None:
            nn.init.zeros_(self.colour.weight)
            nn.init.zeros_(self.colour.bias)

    def one_hot(self, segmentation: Tensor) -> tuple[Tensor, Tensor]:
        """Validate, one-hot and pad with background to whole patches.
        Returns (one-hot [B, 19, S', S'], foreground patch flags [B, P])."""
        cfg = self.cfg
        seg = validate_segmentation(segmentation, cfg.image_size)
        if seg.ndim == 2:
            seg = seg[None]
        pad = cfg.patch_grid * cfg.patch_size - cfg.image_size
        lo, hi = pad // 2, pad - pad // 2
        seg = F.pad(seg, (lo, hi, lo, hi), value=0)  # 0 = background
        onehot = F.one_hot(seg, NUM_CLASSES).permute(0, 3, 1, 2).to(self.fuse[1].weight.dtype)
        fg = F.max_pool2d((seg > 0).to(onehot.dtype)[:, None], cfg.patch_size).flatten(1) > 0
        return onehot, fg

    def forward(self, segmentation: Tensor, style: Tensor) -> ImageTokens:
        onehot, fg = self.one_hot(segmentation.to(self.fuse[1].weight.device))
        b = onehot.shape[0]
        if style.ndim != 2 or style.shape[-1] != self.edit.clip_dim or style.shape[0] not in (1, b):
            raise ValueError(f"style must be [B, {self.edit.clip_dim}] (or [1, {self.edit.clip_dim}]) CLIP "
                             f"embeddings for {b} map(s), got {tuple(style.shape)}")
        index, valid = ImageEncoder.select_foreground(fg)
        tokens = self.vit(onehot, index, valid)
        # CLIP embeddings are unit vectors (components ~ 1/sqrt(D)); rescaled to unit RMS they enter the fusion
        # LayerNorm at the scale of the ViT tokens instead of being drowned by them.
        style = style.to(tokens.dtype) * self.edit.clip_dim**0.5
        style = style.expand(b, -1)[:, None].expand(-1, tokens.shape[1], -1)
        tokens = self.fuse(torch.cat([tokens, style], dim=-1)) * valid[..., None]
        colours = torch.sigmoid(self.colour(tokens)) if self.colour is not None else None
        return ImageTokens(tokens, valid, index, colours=colours)


__all__ = ["EditConfig", "SegStyleEncoder"]

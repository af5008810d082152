"""DINOv2 feature loss (L_DINO) and the SHP-CNN loss (DINOv2 layer-8 CLS token only).

Layer numbering: "layer k" is ``hidden_states[k]`` of transformers'
``Dinov2Model(output_hidden_states=True)``, i.e. the output of the k-th transformer block (1-based), before
the final LayerNorm; ``hidden_states[0]`` is the patch + position embedding. This is the indexing of the
authors' ``dino-loss`` package (v0.0.2, default provider:
``model(..., output_hidden_states=True).hidden_states[i]`` for i in its layer list) and equals torch-hub's
``get_intermediate_layers(x, n=[k - 1], norm=False)``. Layer 11 of ViT-S/14 is thus the second-to-last
block's output, not the (layer-normed) last hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .base import (
    ImageLoss,
    Parts,
    bf16_autocast,
    center_crop,
    cosine_distance,
    imagenet_normalize,
    resize_short_side,
    run_block,
)
from .foundation import DEFAULT_DINOV2, load_dinov2

TokenSet = Literal["cls+patch", "cls", "patch"]


@dataclass
class DinoLossConfig:
    """Settings of the DINOv2 loss; the defaults are the paper's (docs/design.md section 2)."""

    model: str = DEFAULT_DINOV2
    """hub id or local folder of a DINOv2 checkpoint (with or without registers)"""
    layers: tuple[int, ...] = (8, 11)
    """hidden_states indices (0 = embeddings, k = output of block k)"""
    tokens: TokenSet = "cls+patch"
    """which tokens are compared (register tokens never are)"""
    resize: int = 512
    """bicubic resize of the shorter image side before cropping"""
    crop: int = 504
    """centre crop fed to DINOv2; a multiple of the patch size (14)"""
    gradient_checkpointing: bool = False
    """recompute the frozen blocks in backward instead of storing their activations"""
    bf16_on_cuda: bool = True
    """run the frozen network under bf16 autocast on CUDA (never on CPU)"""

    @classmethod
    def for_render(cls, render_size: int, scale: float = 2.0, **overrides) -> DinoLossConfig:
        """Lower feature resolution for small renders: resize to ``scale * render_size`` (at most 512).

        With the default scale, 512 (or 256) px renders get the paper's 512 -> 504, 128 px ones 256 -> 252.
        """
        resize = min(512, int(round(scale * render_size)))
        return cls(resize=resize, crop=14 * (resize // 14), **overrides)


def dino_preprocess(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """[0,1] images -> bicubic resize (shorter side) -> centre crop -> ImageNet normalisation."""
    return imagenet_normalize(center_crop(resize_short_side(images, resize, "bicubic"), crop))


class DinoLoss(ImageLoss):
    """mean over layers and tokens of 1 - cos(DINOv2(pred), DINOv2(target)), per sample.

    ``model`` may be passed to share one loaded DINOv2 between several losses; otherwise ``config.model`` is
    loaded with ``load_dinov2``. The target branch runs without gradients.
    """

    frozen = ("model",)

    def __init__(self, config: DinoLossConfig | None = None, model: nn.Module | None = None):
        super().__init__()
        self.config = config = config or DinoLossConfig()
        self.model = model if model is not None else load_dinov2(config.model)
        self.model.eval().requires_grad_(False)
        mcfg = self.model.config
        if not config.layers:
            raise ValueError(
                "DinoLossConfig.layers is empty; give at least one hidden-state index, e.g. (8, 11)"
            )
        bad = [k for k in config.layers if not 0 <= k <= mcfg.num_hidden_layers]
        if bad:
            raise ValueError(
                f"DINOv2 layers {bad} do not exist: this model has hidden states 0..{mcfg.num_hidden_layers} "
                "(0 = embeddings, k = output of block k)"
            )
        if config.tokens not in ("cls+patch", "cls", "patch"):
            raise ValueError(f"tokens must be 'cls+patch', 'cls' or 'patch', got {config.tokens!r}")
        if config.crop % mcfg.patch_size != 0 or not 0 < config.crop <= config.resize:
            raise ValueError(
                f"DINOv2 crop {config.crop} must be a positive multiple of the patch size {mcfg.patch_size} "
                f"and at most resize ({config.resize})"
            )
        self.num_registers = int(getattr(mcfg, "num_register_tokens", 0) or 0)

    def _select(self, hidden: torch.Tensor) -> torch.Tensor:
        cls_token = hidden[:, :1]
        patches = hidden[:, 1 + self.num_registers :]
        if self.config.tokens == "cls":
            return cls_token
        if self.config.tokens == "patch":
            return patches
        return torch.cat([cls_token, patches], dim=1)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Selected tokens [B, T, C] of each configured layer, for [0,1] images [B,3,H,W]."""
        cfg = self.config
        x = dino_preprocess(images, cfg.resize, cfg.crop)
        wanted = set(cfg.layers)
        found: dict[int, torch.Tensor] = {}
        with bf16_autocast(cfg.bf16_on_cuda, x.device):
            hidden = self.model.embeddings(x)
            if 0 in wanted:
                found[0] = self._select(hidden)
            # Blocks after the deepest requested layer cannot change the loss, so they are never run.
            for k, block in enumerate(self.model.encoder.layer[: max(cfg.layers)], start=1):
                hidden = run_block(block, hidden, cfg.gradient_checkpointing)
                if k in wanted:
                    found[k] = self._select(hidden)
        return [found[k] for k in cfg.layers]

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        pred_features = self.features(pred)
        with torch.no_grad():
            target_features = self.features(target)
        parts = {
            f"layer{k}": cosine_distance(p, t, dim=-1).mean(dim=1)
            for k, p, t in zip(self.config.layers, pred_features, target_features, strict=True)
        }
        total = torch.stack(list(parts.values()), dim=0).mean(dim=0)
        return total, parts if len(parts) > 1 else {}


def sharpen_loss_config(**overrides) -> DinoLossConfig:
    """The SHP-CNN stage's loss: DINOv2 layer-8 CLS token only (paper)."""
    return DinoLossConfig(**{"layers": (8,), "tokens": "cls", **overrides})


class SharpenLoss(DinoLoss):
    """Loss of the sharpening CNN stage: 1 - cos of DINOv2 layer-8 CLS tokens."""

    def __init__(self, config: DinoLossConfig | None = None, model: nn.Module | None = None):
        super().__init__(config or sharpen_loss_config(), model)

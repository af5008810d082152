"""3D decoder: template tokens that only cross-attend to the 2D tokens (no self-attention anywhere).

Layer i computes F_i = F_{i-1} + MLP_i(F_{i-1} + ATTN_i(F_{i-1}, F2D)) (docs/design.md section 2), pre-norm. The
attention output reaches F only through the MLP, exactly as the published update. Because every query
token attends to the image alone, the tokens never exchange information: token k's output depends on its own
initial embedding and on F2D only (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .layers import Attention, Mlp, fourier_features, init_linear
from .template import HeadTemplate


class TokenEmbedding(nn.Module):
    """Initial 3D tokens: Fourier features of the 16 points' position and normal -> Linear -> LayerNorm.
    Positions are centred and divided by half the head size so the Fourier bands are resolution-free."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_freqs = cfg.fourier_freqs
        per_point = 6 * (1 + 2 * cfg.fourier_freqs)
        self.proj = nn.Linear(16 * per_point, cfg.width)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, template: HeadTemplate) -> Tensor:
        """-> [T, width]: the same initial tokens for every image."""
        half = 0.5 * template.extent().max().clamp_min(1e-6)
        xyz = (template.xyz - template.center()) / half
        feats = fourier_features(torch.cat([xyz, template.normals], dim=-1), self.num_freqs)  # [R, R, D]
        return self.norm(self.proj(template.to_tokens(feats)))


class CrossAttentionLayer(nn.Module):
    def __init__(self, width: int, heads: int, context_dim: int, mlp_ratio: float, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_ctx = nn.LayerNorm(context_dim)
        self.attn = Attention(width, heads, context_dim, qk_norm)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, f: Tensor, f2d: Tensor, key_mask: Tensor | None) -> Tensor:
        h = f + self.attn(self.norm_q(f), self.norm_ctx(f2d), key_mask)
        return f + self.mlp(self.norm_mlp(h))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = TokenEmbedding(cfg)
        self.layers = nn.ModuleList(CrossAttentionLayer(cfg.width, cfg.heads, cfg.f2d_width, cfg.mlp_ratio,
                                                        cfg.qk_norm)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.apply(init_linear)
        if cfg.attn_init == "xavier":
            for layer in self.layers:
                for lin in (layer.attn.q, layer.attn.kv, layer.attn.out):
                    nn.init.xavier_uniform_(lin.weight)

    def forward(self, f2d: Tensor, key_mask: Tensor | None, tokens: Tensor) -> Tensor:
        """f2d [B, M, C2d], key_mask [B, M] (True = real token), initial tokens [T, W] or [B, T, W]
        -> [B, T, W]."""
        f = tokens.expand(f2d.shape[0], *tokens.shape[-2:]) if tokens.ndim == 2 else tokens
        for layer in self.layers:
            f = layer(f, f2d, key_mask)
        return self.norm(f)

    def attention_maps(self, f2d: Tensor, key_mask: Tensor | None, tokens: Tensor) -> list[Tensor]:
        """Per layer, [B, heads, T, M] the attention of every 3D token over the 2D tokens (diagnostics)."""
        f = tokens.expand(f2d.shape[0], *tokens.shape[-2:]) if tokens.ndim == 2 else tokens
        maps = []
        for layer in self.layers:
            maps.append(layer.attn.weights(layer.norm_q(f), layer.norm_ctx(f2d), key_mask))
            f = layer(f, f2d, key_mask)
        return maps

"""Transformer building blocks shared by the encoder (self-attention) and the decoder (cross-attention)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_linear(module: nn.Module) -> None:
    """ViT-style initialisation: truncated normal (std 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Attention(nn.Module):
    """Multi-head attention on PyTorch's fused ``scaled_dot_product_attention``.

    Queries come from ``x``; keys and values from ``context`` (cross-attention) or from ``x`` itself.
    ``key_mask`` [B, M] is True for real tokens and False for padding. ``qk_norm``: LayerNorm over each head's
    channels of the queries and keys before their dot product (only then do the modules ``q_norm`` and
    ``k_norm`` exist, so checkpoints without it load unchanged).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else None
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else None

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        m = context.shape[1]
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # A boolean SDPA mask is True where attention is allowed; broadcast over heads and queries.
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))

    def weights(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """[B, heads, N, M] attention probabilities of :meth:`forward` (for diagnostics; not fused)."""
        context = x if context is None else context
        b, n, d = x.shape
        m, h = context.shape[1], self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k = self.kv(context).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)[0]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return logits.softmax(-1)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class SelfAttentionBlock(nn.Module):
    """Pre-norm ViT block: x + attn(LN(x)); x + MLP(LN(x)), padding keys masked out."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask=key_mask)
        return x + self.mlp(self.norm2(x))


def fourier_features(x: Tensor, num_freqs: int) -> Tensor:
    """[..., D] -> [..., D * (1 + 2 * num_freqs)]: the raw values, then sin/cos at pi * 2^k, k < num_freqs.

    ``x`` should be roughly in [-1, 1] (positions divided by the head size): the lowest band then spans the
    head once and the highest resolves ~1/2^num_freqs of it.
    """
    freqs = math.pi * (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device))
    angles = (x.unsqueeze(-1) * freqs).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)

"""Gaussian heads: each 3D token -> 16 Gaussian latents (PixelShuffle(4)) -> linear heads -> Gaussians.

* position  X = X_template + tanh(Linear(F) * s_init) * s_max   (per axis, so |X - X_template| <= s_max)
* scale     exp(clamp(Linear(F) + log(scale_init)))             (metres, clamped to [scale_min, scale_max])
* rotation  normalise(Linear(F) + (1, 0, 0, 0))                 (quaternion wxyz; starts at identity)
* opacity   sigmoid(Linear(F) + logit(opacity_init))            (starts near opacity_init)
* colour    sigmoid(Linear(F))                                  (RGB, SH degree 0; starts grey)
            or, with ``colour_read``, sigmoid(logit(READ(F, F2D)) + Linear(F)) where READ is the input's own
            patch colours averaged by a small cross-attention (:class:`ColourRead`; starts at the mean colour)

The output is a batched :class:`perchead.geometry.Gaussians` in the template's row-major point order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.geometry import Gaussians, rgb_to_sh_dc

from .config import ModelConfig
from .encoder import ImageTokens
from .layers import init_linear
from .template import TOKEN_SIDE, HeadTemplate

# Per-Gaussian numbers after the position ones (shared with the lifting decoder, perchead.model.lifting).
APPEARANCE = (3, 4, 1, 3)  # scale, rotation, opacity, colour
_SPLIT = (3, *APPEARANCE)  # position offset from the template point, then the appearance


def appearance_bias(cfg: ModelConfig, spacing: float) -> Tensor:
    """Output bias of the appearance numbers: scale = ``scale_init`` x ``spacing`` (clamped), identity
    rotation, opacity ``opacity_init``, grey colour."""
    init_scale = min(max(cfg.scale_init * (spacing or 1e-3), cfg.scale_min), cfg.scale_max)
    bias = torch.zeros(sum(APPEARANCE))
    bias[0:3] = math.log(init_scale)
    bias[3] = 1.0  # quaternion w
    bias[7] = math.log(cfg.opacity_init / (1.0 - cfg.opacity_init))
    return bias


def activate_appearance(raw: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw appearance numbers [..., 11] -> (log_scales, unit quaternions wxyz, opacity logits, SH DC)."""
    d_scale, d_rot, d_opa, d_rgb = raw.split(APPEARANCE, dim=-1)
    log_scales = d_scale.clamp(math.log(cfg.scale_min), math.log(cfg.scale_max))
    return (log_scales, F.normalize(d_rot, dim=-1), d_opa.squeeze(-1),
            rgb_to_sh_dc(torch.sigmoid(d_rgb)).unsqueeze(-2))


class ColourRead(nn.Module):
    """Per-Gaussian cross-attention from the Gaussian latents to the 2D tokens whose *values are the patches'
    mean RGB*: each Gaussian reads a colour straight from the photo, mixed over a few heads by weights of its
    own. Why: the paper's colour head must route a patch's colour through the encoder, the attention and the
    MLPs before the network can copy it, which a small CPU budget does not learn (issue 27: the demo painted
    every head's back alike). Here the copy is built in and only *where to look* is learnt: what a Gaussian at
    the back of the head should read is the hair the photo shows. Still cross-attention from 3D to 2D only:
    no Gaussian sees another."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, d = cfg.colour_read_heads, cfg.colour_read_dim
        self.heads, self.dim = h, d
        self.q = nn.Linear(cfg.gaussian_latent, h * d)
        self.k = nn.Linear(cfg.f2d_width, h * d)
        self.mix = nn.Linear(cfg.gaussian_latent, h)
        # Attention logits of order one from the start (queries and keys at unit scale): what a Gaussian reads
        # must be able to move with the first steps' gradients, which vanish with two 0.02-std factors.
        for lin in (self.q, self.k):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        init_linear(self.mix)

    def forward(self, latents: Tensor, image: ImageTokens) -> Tensor:
        """latents [B, N, C], image tokens with ``colours`` -> [B, N, 3] colours in [0, 1]."""
        if image.colours is None:
            raise ValueError("colour_read needs the image tokens' patch colours: encode with a colour_read "
                             "config (ImageEncoder fills ImageTokens.colours)")
        q, k = self._queries_keys(latents, image)
        v = image.colours[:, None].expand(-1, self.heads, -1, 3)
        read = F.scaled_dot_product_attention(q, k, v, attn_mask=image.valid[:, None, None, :])  # [B, H, N, 3]
        return torch.einsum("bhnc,bnh->bnc", read, self.mix(latents).softmax(-1))

    def weights(self, latents: Tensor, image: ImageTokens) -> Tensor:
        """[B, N, M]: the share of each Gaussian's read colour that comes from each 2D token (the heads'
        attention mixed by the Gaussian's head weights); for diagnostics: where a Gaussian looks."""
        q, k = self._queries_keys(latents, image)
        logits = (q @ k.transpose(-1, -2)) / self.dim**0.5
        attn = logits.masked_fill(~image.valid[:, None, None, :], float("-inf")).softmax(-1)  # [B, H, N, M]
        return torch.einsum("bhnm,bnh->bnm", attn, self.mix(latents).softmax(-1))

    def _queries_keys(self, latents: Tensor, image: ImageTokens) -> tuple[Tensor, Tensor]:
        b, n, _ = latents.shape
        m, h, d = image.tokens.shape[1], self.heads, self.dim
        q = self.q(latents).view(b, n, h, d).transpose(1, 2)
        k = self.k(image.tokens).view(b, m, h, d).transpose(1, 2)
        return q, k


class GaussianHeads(nn.Module):
    def __init__(self, cfg: ModelConfig, template: HeadTemplate) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.gaussian_latent
        self.expand = nn.Linear(cfg.width, TOKEN_SIDE**2 * c)
        self.shuffle = nn.PixelShuffle(TOKEN_SIDE)
        self.out = nn.Linear(c, sum(_SPLIT))
        self.apply(init_linear)
        self.colour_read = ColourRead(cfg) if cfg.colour_read else None
        # The offset bound in metres depends on the template; a buffer so a checkpoint keeps its own.
        self.register_buffer("s_max_m", torch.tensor(cfg.s_max * template.head_size()))
        with torch.no_grad():
            self.out.bias.copy_(torch.cat([torch.zeros(3), appearance_bias(cfg, template.point_spacing())]))

    def latents(self, features: Tensor, token_grid: int) -> Tensor:
        """[B, T, W] token features -> [B, R*R, C] per-Gaussian latents (row-major over the point grid)."""
        b, t, _ = features.shape
        x = self.expand(features).transpose(1, 2).reshape(b, -1, token_grid, token_grid)
        return F.gelu(self.shuffle(x)).flatten(2).transpose(1, 2)

    def forward(self, features: Tensor, template: HeadTemplate, image: ImageTokens | None = None) -> Gaussians:
        """``image``: the 2D tokens the features were decoded from; needed (only) with ``colour_read``."""
        cfg = self.cfg
        latents = self.latents(features, template.token_grid)
        raw = self.out(latents)
        if self.colour_read is not None:
            if image is None:
                raise ValueError("this model's colours are read from the image (colour_read): pass the image "
                                 "tokens to the Gaussian heads")
            read = self.colour_read(latents, image).clamp(1e-3, 1.0 - 1e-3)
            raw = torch.cat([raw[..., :-3], raw[..., -3:] + torch.logit(read)], -1)
        d_pos, appearance = raw.split((3, sum(APPEARANCE)), dim=-1)
        anchors, _ = template.points()
        means = anchors + torch.tanh(d_pos * cfg.s_init) * self.s_max_m
        return Gaussians(means, *activate_appearance(appearance, cfg))

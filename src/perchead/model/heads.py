"""Gaussian heads: each 3D token -> 16 Gaussian latents (PixelShuffle(4)) -> linear heads -> Gaussians.

* position  X = X_template + tanh(Linear(F) * s_init) * s_max   (per axis, so |X - X_template| <= s_max)
* scale     exp(clamp(Linear(F) + log(scale_init)))             (metres, clamped to [scale_min, scale_max])
* rotation  normalise(Linear(F) + (1, 0, 0, 0))                 (quaternion wxyz; starts at identity)
* opacity   sigmoid(Linear(F) + logit(opacity_init))            (starts near opacity_init)
* colour    sigmoid(Linear(F))                                  (RGB, SH degree 0; starts grey)

The output is a batched :class:`perchead.geometry.Gaussians` in the template's row-major point order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.geometry import Gaussians, rgb_to_sh_dc

from .config import ModelConfig
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


class GaussianHeads(nn.Module):
    def __init__(self, cfg: ModelConfig, template: HeadTemplate) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.gaussian_latent
        self.expand = nn.Linear(cfg.width, TOKEN_SIDE**2 * c)
        self.shuffle = nn.PixelShuffle(TOKEN_SIDE)
        self.out = nn.Linear(c, sum(_SPLIT))
        self.apply(init_linear)
        # The offset bound in metres depends on the template; a buffer so a checkpoint keeps its own.
        self.register_buffer("s_max_m", torch.tensor(cfg.s_max * template.head_size()))
        with torch.no_grad():
            self.out.bias.copy_(torch.cat([torch.zeros(3), appearance_bias(cfg, template.point_spacing())]))

    def latents(self, features: Tensor, token_grid: int) -> Tensor:
        """[B, T, W] token features -> [B, R*R, C] per-Gaussian latents (row-major over the point grid)."""
        b, t, _ = features.shape
        x = self.expand(features).transpose(1, 2).reshape(b, -1, token_grid, token_grid)
        return F.gelu(self.shuffle(x)).flatten(2).transpose(1, 2)

    def forward(self, features: Tensor, template: HeadTemplate) -> Gaussians:
        cfg = self.cfg
        raw = self.out(self.latents(features, template.token_grid))
        d_pos, appearance = raw.split((3, sum(APPEARANCE)), dim=-1)
        anchors, _ = template.points()
        means = anchors + torch.tanh(d_pos * cfg.s_init) * self.s_max_m
        return Gaussians(means, *activate_appearance(appearance, cfg))

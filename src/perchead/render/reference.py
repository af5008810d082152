"""Dense reference compositor: every Gaussian against every pixel, in plain PyTorch autograd.

Slow (memory grows with pixels x Gaussians) and meant for small scenes: it is the definition the fast
backends are tested against, so it is written to be obviously correct rather than fast.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .project import ALPHA_MAX, ALPHA_MIN, SIGMA_CUTOFF, T_MIN, Projected


def composite_reference(proj: Projected, features: Tensor, opacities: Tensor, width: int, height: int,
                        chunk_pixels: int = 4096) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of projected Gaussians.

    Returns premultiplied features [H, W, F] (sum_i f_i alpha_i T_i) and alpha [H, W] (1 - T_final).
    """
    idx = torch.nonzero(proj.valid).squeeze(-1)
    # Stable sort by depth: ties keep index order, the same order the tiled backends use.
    order = idx[torch.sort(proj.depths.detach()[idx], stable=True).indices]
    means2d, conics = proj.means2d[order], proj.conics[order]
    feats, opac = features[order], opacities[order]

    ys, xs = torch.meshgrid(torch.arange(height, dtype=means2d.dtype), torch.arange(width, dtype=means2d.dtype),
                            indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2).to(means2d.device) + 0.5

    out_feat, out_alpha = [], []
    for start in range(0, pix.shape[0], chunk_pixels):
        p = pix[start:start + chunk_pixels]
        d = p[:, None, :] - means2d[None, :, :]  # [P, N, 2]
        dx, dy = d[..., 0], d[..., 1]
        sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
        alpha = torch.clamp(opac * torch.exp(-sigma), max=ALPHA_MAX)
        contributes = (sigma >= 0) & (sigma <= SIGMA_CUTOFF) & (alpha >= ALPHA_MIN)
        alpha = torch.where(contributes, alpha, torch.zeros_like(alpha))
        # Transmittance after each Gaussian; compositing stops at the first one that would push it to
        # T_MIN or below, and that Gaussian is not drawn. T_after is non-increasing, so a mask suffices.
        t_after = torch.cumprod(1.0 - alpha, dim=-1)
        drawn = t_after > T_MIN
        t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=-1)
        weights = torch.where(drawn, alpha * t_before, torch.zeros_like(alpha))
        t_final = torch.where(drawn, 1.0 - alpha, torch.ones_like(alpha)).prod(dim=-1)
        out_feat.append(weights @ feats)
        out_alpha.append(1.0 - t_final)
    feat = torch.cat(out_feat).reshape(height, width, -1) if out_feat else features.new_zeros(height, width,
                                                                                               features.shape[-1])
    alpha = torch.cat(out_alpha).reshape(height, width)
    return feat, alpha

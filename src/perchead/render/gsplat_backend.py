"""gsplat's CUDA rasterizer behind perchead's ``rasterize()`` contract."""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry.gaussians import Gaussians


def rasterize_gsplat(gaussians: Gaussians, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                     background: Tensor, near: float, far: float, eps2d: float) -> tuple[Tensor, Tensor, Tensor]:
    from gsplat import rasterization

    sh_degree = gaussians.sh_degree
    colors = gaussians.sh if sh_degree > 0 else gaussians.rgb
    # "RGB+ED": gsplat appends the expected depth (already divided by alpha) as a fourth channel. The
    # background is composited here rather than by gsplat so that the depth channel is left alone.
    render, alpha, _ = rasterization(
        means=gaussians.means, quats=gaussians.quats, scales=gaussians.scales, opacities=gaussians.opacities,
        colors=colors, viewmats=viewmats, Ks=Ks, width=width, height=height, near_plane=near, far_plane=far,
        eps2d=eps2d, sh_degree=sh_degree if sh_degree > 0 else None, render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    rgb = render[..., :3] + (1.0 - alpha) * background
    depth = torch.where(alpha > 1e-6, render[..., 3:], torch.zeros_like(alpha))
    return rgb, alpha, depth

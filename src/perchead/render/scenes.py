"""Small synthetic Gaussian scenes for tests and benchmarks of the renderer."""

from __future__ import annotations

import torch

from ..geometry.gaussians import Gaussians


def random_gaussians(n: int, seed: int = 0, spread: float = 0.3, log_scale_mean: float = -3.0,
                     sh_degree: int = 0, dtype: torch.dtype = torch.float32) -> Gaussians:
    """N random Gaussians around the origin, with random anisotropic shapes, opacities and colours."""
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=gen, dtype=dtype)
    sh[:, 1:] *= 0.3
    return Gaussians(
        means=torch.randn(n, 3, generator=gen, dtype=dtype) * spread,
        log_scales=torch.randn(n, 3, generator=gen, dtype=dtype) * 0.5 + log_scale_mean,
        quats=torch.randn(n, 4, generator=gen, dtype=dtype),
        opacity_logits=torch.randn(n, generator=gen, dtype=dtype) * 2.0,
        sh=sh,
    )


def edge_case_gaussians(camera_distance: float, seed: int = 0, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Gaussians that stress culling and compositing, for a camera at +z ``camera_distance`` looking at 0:

    behind the camera, straddling the near plane, off-screen, tiny, huge, zero opacity, and a stack of
    many opaque Gaussians on one pixel (which triggers the early stop).
    """
    gen = torch.Generator().manual_seed(seed)

    def block(means, log_scale, opacity_logit):
        n = len(means)
        return Gaussians(
            means=torch.as_tensor(means, dtype=dtype),
            log_scales=torch.full((n, 3), float(log_scale), dtype=dtype)
            + 0.3 * torch.randn(n, 3, generator=gen, dtype=dtype),
            quats=torch.randn(n, 4, generator=gen, dtype=dtype),
            opacity_logits=torch.full((n,), float(opacity_logit), dtype=dtype),
            sh=torch.randn(n, 1, 3, generator=gen, dtype=dtype),
        )

    d = camera_distance
    jitter = lambda n, s: (torch.randn(n, 3, generator=gen, dtype=dtype) * s).tolist()  # noqa: E731
    behind = [[x, y, d + 0.5 + abs(z)] for x, y, z in jitter(5, 0.2)]
    straddling = [[x, y, d - 0.02] for x, y, _ in jitter(4, 0.01)]  # 2 cm in front, 5 cm wide: crosses near
    offscreen = [[3.0 + x, y, z] for x, y, z in jitter(5, 0.1)]
    tiny = jitter(10, 0.2)
    huge = jitter(2, 0.05)
    invisible = jitter(6, 0.2)
    stack = [[0.01 * i / 40, 0.0, 0.3 - 0.005 * i] for i in range(40)]
    return Gaussians.cat([
        block(behind, -2.0, 2.0),
        block(straddling, -3.0, 1.0),
        block(offscreen, -2.5, 2.0),
        block(tiny, -9.0, 3.0),
        block(huge, 0.5, -1.0),
        block(invisible, -2.5, -50.0),
        block(stack, -3.0, 4.0),
    ])

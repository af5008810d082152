"""Compile the CPU rasterizer's numba kernels once, ahead of the first real render.

numba compiles a kernel at its first call and caches the machine code beside the module (``cache=True``), keyed
by the CPU it was compiled for. Without this step the first ``perchead reconstruct`` after an install pays the
compilation (about 10 s on a 2-core machine) inside its first fit step. ``scripts/setup.sh`` runs

    python -m perchead.render.warmup

which renders a tiny scene forward and backward, in the dtype and with the feature counts the package uses, so
that every kernel is compiled and written to numba's cache.
"""

from __future__ import annotations

import time

import torch

from ..geometry import Gaussians, focal_from_fov, intrinsics, orbit_viewmats
from .rasterize import rasterize, render_features


def warm_up() -> float:
    """Render a small scene through every CPU kernel (forward, backward, feature compositing); returns seconds."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    n = 64
    means = (torch.randn(n, 3, generator=gen) * 0.05).requires_grad_()
    g = Gaussians.from_activated(means, torch.full((n, 3), 0.01), torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
                                 torch.full((n,), 0.7), torch.rand(n, 3, generator=gen))
    viewmats = orbit_viewmats([0.0, 90.0], [0.0, 0.0], 1.0)
    Ks = intrinsics(focal_from_fov(30.0, 32), width=32, height=32).expand(2, 3, 3)
    out = rasterize(g, viewmats, Ks, 32, 32, backend="cpu")
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    with torch.no_grad():
        render_features(g, torch.rand(n, 19, generator=gen), viewmats, Ks, 32, 32, backend="cpu")
    return time.perf_counter() - start


def main() -> int:
    seconds = warm_up()
    print(f"perchead: CPU rasterizer kernels compiled and cached ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

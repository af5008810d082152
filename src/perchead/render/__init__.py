"""Differentiable Gaussian splatting: one ``rasterize()`` with reference, CPU and gsplat backends."""

from .rasterize import RenderOutput, gsplat_available, rasterize, render_features, resolve_backend

__all__ = ["RenderOutput", "gsplat_available", "rasterize", "render_features", "resolve_backend"]

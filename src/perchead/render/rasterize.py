"""``rasterize()``: the one rendering entry point, with interchangeable backends.

* ``reference`` -- dense PyTorch, every Gaussian against every pixel; the definition the others must match.
* ``cpu``       -- the project's tiled numba kernels with a hand-written backward (gsplat has no CPU path).
* ``gsplat``    -- gsplat's CUDA kernels, when gsplat is installed and the tensors live on a GPU.

``backend="auto"`` picks gsplat for CUDA tensors when it imports, else ``cpu``.

All backends share one contribution rule (see :mod:`perchead.render.project`): a pixel centre receives a
Gaussian iff it lies inside the Gaussian's 3-sigma ellipse and alpha = min(0.99, o * exp(-sigma)) >= 1/255;
compositing is front to back in stable depth order and stops before transmittance would fall to 1e-4.
gsplat clips with square tiles instead of the ellipse, so it differs from the other two by at most the
faint (< 1.2% alpha) fringe between the 3-sigma ellipse and its bounding box.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from ..geometry.cameras import camera_centers
from ..geometry.gaussians import Gaussians
from .cpu import DEFAULT_TILE_SIZE, composite_cpu
from .project import Projected, project
from .project_cpu import project_cpu
from .reference import composite_reference

Backend = Literal["auto", "reference", "cpu", "gsplat"]


@dataclass
class RenderOutput:
    rgb: Tensor  # [..., C, H, W, 3], composited over the background
    alpha: Tensor  # [..., C, H, W, 1]
    depth: Tensor  # [..., C, H, W, 1] expected camera-space depth of the drawn Gaussians; 0 where alpha ~ 0


def gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None and torch.cuda.is_available()


def resolve_backend(backend: Backend, device: torch.device) -> str:
    if backend == "auto":
        if device.type == "cuda":
            if gsplat_available():
                return "gsplat"
            raise RuntimeError("rendering CUDA tensors needs gsplat: `pip install perchead[cuda]`, or pass "
                               "backend='cpu' to render on the CPU")
        return "cpu"
    if backend == "gsplat" and not gsplat_available():
        raise RuntimeError("backend='gsplat' needs a CUDA GPU and gsplat (`pip install perchead[cuda]`)")
    if backend not in ("reference", "cpu", "gsplat"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, reference, cpu or gsplat")
    return backend


def _background(background: Tensor | float | tuple | None, like: Tensor) -> Tensor:
    if background is None:
        background = 1.0  # white, the field's evaluation convention (docs/design.md section 2)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    return bg.expand(3) if bg.ndim == 0 else bg


def rasterize(gaussians: Gaussians, viewmats: Tensor, Ks: Tensor, width: int, height: int,
              background: Tensor | float | tuple | None = None, backend: Backend = "auto",
              near: float = 0.01, far: float = 1e10, eps2d: float = 0.3, check_finite: bool = True,
              tile_size: int = DEFAULT_TILE_SIZE) -> RenderOutput:
    """Render Gaussians from C cameras, differentiably with respect to every Gaussian parameter.

    Args:
        gaussians: N Gaussians, or a batch [B, N, ...] rendered with cameras [B, C, ...].
        viewmats: [C, 4, 4] (or [B, C, 4, 4]) world-to-camera matrices, OpenCV axes.
        Ks: [C, 3, 3] (or [B, C, 3, 3]) pixel-space intrinsics.
        background: RGB in [0, 1] (a float means grey level); white by default.
        backend: "auto", "reference", "cpu" or "gsplat".
    """
    if viewmats.ndim == 2:
        viewmats = viewmats[None]
    if Ks.ndim == 2:
        Ks = Ks[None].expand(*viewmats.shape[:-2], 3, 3)
    if viewmats.shape[-2:] != (4, 4) or Ks.shape[-2:] != (3, 3) or viewmats.shape[:-2] != Ks.shape[:-2]:
        raise ValueError(f"viewmats must be [C,4,4] and Ks [C,3,3] with the same C; got "
                         f"{tuple(viewmats.shape)} and {tuple(Ks.shape)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if check_finite:
        gaussians.check_finite()
        for name, t in (("viewmats", viewmats), ("Ks", Ks)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or infinite values")

    if gaussians.batch_shape:
        if tuple(viewmats.shape[:-3]) != tuple(gaussians.batch_shape):
            raise ValueError(f"batched Gaussians {tuple(gaussians.batch_shape)} need cameras [B, C, 4, 4]; got "
                             f"{tuple(viewmats.shape)}")
        outs = [rasterize(gaussians[i], viewmats[i], Ks[i], width, height, background, backend, near, far,
                          eps2d, False, tile_size) for i in range(gaussians.batch_shape[0])]
        return RenderOutput(*(torch.stack([getattr(o, k) for o in outs]) for k in ("rgb", "alpha", "depth")))

    device = gaussians.means.device
    which = resolve_backend(backend, device)
    bg = _background(background, gaussians.means)
    viewmats, Ks = viewmats.to(gaussians.means), Ks.to(gaussians.means)
    if which == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        return RenderOutput(*rasterize_gsplat(gaussians, viewmats, Ks, width, height, bg, near, far, eps2d))

    colors = gaussians.colors(camera_centers(viewmats) if gaussians.sh_degree > 0 else None)
    colors = colors if colors.ndim == 3 else colors.expand(len(viewmats), *colors.shape)
    # Depth rides along as a fourth feature so that one compositing pass gives both, with gradients.
    cam_z = gaussians.means @ viewmats[:, 2, :3].transpose(0, 1) + viewmats[:, 2, 3]  # [N, C]
    features = torch.cat([colors, cam_z.transpose(0, 1).unsqueeze(-1)], dim=-1)
    feat, alpha = render_features(gaussians, features, viewmats, Ks, width, height, which, near, far, eps2d,
                                  tile_size)
    rgb = feat[..., :3] + (1.0 - alpha) * bg
    depth = torch.where(alpha > 1e-6, feat[..., 3:] / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
    return RenderOutput(rgb, alpha, depth)


def render_features(gaussians: Gaussians, features: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                    backend: Backend = "auto", near: float = 0.01, far: float = 1e10, eps2d: float = 0.3,
                    tile_size: int = DEFAULT_TILE_SIZE) -> tuple[Tensor, Tensor]:
    """Composite arbitrary per-Gaussian features (labels, latent codes, colours without SH) instead of RGB.

    ``features`` is [N, F] or per camera [C, N, F]. Returns the premultiplied features [C, H, W, F]
    (sum_i f_i alpha_i T_i, no background) and alpha [C, H, W, 1]. Unbatched Gaussians only. On CUDA
    ("auto" / "gsplat") the features are composited by the reference backend.
    """
    which = resolve_backend(backend, gaussians.means.device)
    if which == "gsplat":
        # gsplat composites RGB only here; the reference compositor is plain PyTorch and runs on the GPU too
        which = "reference"
    if viewmats.ndim == 2:
        viewmats, Ks = viewmats[None], Ks.reshape(-1, 3, 3)
    viewmats, Ks = viewmats.to(gaussians.means), Ks.to(gaussians.means).expand(len(viewmats), 3, 3)
    if features.ndim == 2:
        features = features.expand(len(viewmats), *features.shape)
    opacities, scales = gaussians.opacities, gaussians.scales
    if which == "cpu":
        # One call for all cameras: the kernels share the cores across the views' tiles.
        if viewmats.requires_grad or Ks.requires_grad:  # the numba projection has no camera gradient
            projs = [project(gaussians.means, gaussians.quats, scales, viewmats[c], Ks[c], width, height, near,
                             far, eps2d) for c in range(len(viewmats))]
            stacked = Projected(*(torch.stack([getattr(p, f.name) for p in projs]) for f in fields(Projected)))
        else:
            stacked = project_cpu(gaussians.means, gaussians.quats, scales, viewmats, Ks, width, height, near,
                                  far, eps2d)
        feat, alpha = composite_cpu(stacked, features, opacities, width, height, tile_size)
        return feat, alpha.unsqueeze(-1)
    projs = [project(gaussians.means, gaussians.quats, scales, viewmats[c], Ks[c], width, height, near, far, eps2d)
             for c in range(len(viewmats))]
    feats, alphas = [], []
    for c, proj in enumerate(projs):
        feat, alpha = composite_reference(proj, features[c], opacities, width, height)
        feats.append(feat)
        alphas.append(alpha.unsqueeze(-1))
    return torch.stack(feats), torch.stack(alphas)

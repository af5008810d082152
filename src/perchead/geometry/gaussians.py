"""The one container for 3D Gaussians, with every activation in one place.

Parameters are stored raw, exactly as a standard 3DGS PLY stores them, so that a network output, a PLY file
and the renderer share one layout:

* ``means``          [..., N, 3]  positions (world / canonical head frame)
* ``log_scales``     [..., N, 3]  log of the per-axis standard deviations
* ``quats``          [..., N, 4]  rotations as (w, x, y, z); need not be normalised
* ``opacity_logits`` [..., N]     logit of the opacity
* ``sh``             [..., N, K, 3] spherical-harmonic colour coefficients, K = (degree + 1)^2;
                     the DC term maps to colour as ``0.5 + SH_C0 * sh[..., 0, :]`` (3DGS convention)

A leading batch dimension is allowed (one set of Gaussians per head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
          0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    return dc * SH_C0 + 0.5


def sh_degree_from_coeffs(k: int) -> int:
    degree = int(round(math.sqrt(k))) - 1
    if (degree + 1) ** 2 != k or not 0 <= degree <= 3:
        raise ValueError(f"{k} SH coefficients per channel is not (degree+1)^2 for a degree 0..3")
    return degree


def eval_sh(sh: Tensor, dirs: Tensor) -> Tensor:
    """Colour of SH coefficients [..., K, 3] seen along unit directions [..., 3] (3DGS' evaluation, up to
    degree 3), before the +0.5 offset and clamping."""
    degree = sh_degree_from_coeffs(sh.shape[-2])
    out = SH_C0 * sh[..., 0, :]
    if degree == 0:
        return out
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    out = out - _SH_C1 * y * sh[..., 1, :] + _SH_C1 * z * sh[..., 2, :] - _SH_C1 * x * sh[..., 3, :]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + _SH_C2[0] * xy * sh[..., 4, :] + _SH_C2[1] * yz * sh[..., 5, :]
           + _SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6, :] + _SH_C2[3] * xz * sh[..., 7, :]
           + _SH_C2[4] * (xx - yy) * sh[..., 8, :])
    if degree == 2:
        return out
    return (out + _SH_C3[0] * y * (3 * xx - yy) * sh[..., 9, :] + _SH_C3[1] * xy * z * sh[..., 10, :]
            + _SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
            + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
            + _SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :]
            + _SH_C3[5] * z * (xx - yy) * sh[..., 14, :] + _SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])


@dataclass
class Gaussians:
    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[:-1]
        expected = {"means": (*n, 3), "log_scales": (*n, 3), "quats": (*n, 4), "opacity_logits": n}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != tuple(shape):
                raise ValueError(f"Gaussians.{name} has shape {tuple(getattr(self, name).shape)}, "
                                 f"expected {tuple(shape)}")
        if tuple(self.sh.shape[:-2]) != tuple(n) or self.sh.shape[-1] != 3:
            raise ValueError(f"Gaussians.sh has shape {tuple(self.sh.shape)}, expected {(*n, 'K', 3)}")
        sh_degree_from_coeffs(self.sh.shape[-2])

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_activated(cls, means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor,
                       rgb: Tensor) -> Gaussians:
        """Build from activated values: scales > 0, opacities in (0, 1), RGB colours in [0, 1]."""
        opacities = opacities.clamp(1e-6, 1 - 1e-6)
        return cls(means, torch.log(scales), quats, torch.logit(opacities), rgb_to_sh_dc(rgb).unsqueeze(-2))

    # -- activations: the only place where raw parameters become physical quantities ------------------
    @property
    def scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_coeffs(self.sh.shape[-2])

    @property
    def rgb(self) -> Tensor:
        """View-independent colour (the DC term), clamped at 0 like 3DGS."""
        return sh_dc_to_rgb(self.sh[..., 0, :]).clamp_min(0.0)

    def colors(self, campos: Tensor | None = None) -> Tensor:
        """RGB seen from camera centres ``campos`` [C, 3] -> [C, N, 3]; DC only when no camera is given."""
        if self.sh_degree == 0 or campos is None:
            rgb = self.rgb
            return rgb if campos is None else rgb.unsqueeze(0).expand(len(campos), *rgb.shape)
        dirs = torch.nn.functional.normalize(self.means.unsqueeze(0) - campos[:, None, :], dim=-1)
        return (eval_sh(self.sh.unsqueeze(0), dirs) + 0.5).clamp_min(0.0)

    # -- bookkeeping ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    def __getitem__(self, index) -> Gaussians:
        """Index the batch dimension (``g[0]``) -- not individual Gaussians; use :meth:`select` for those."""
        if not self.batch_shape:
            raise IndexError("these Gaussians have no batch dimension; use select() to pick Gaussians")
        return Gaussians(*(getattr(self, f.name)[index] for f in fields(self)))

    def select(self, mask_or_index: Tensor) -> Gaussians:
        """Subset of Gaussians (unbatched only)."""
        return Gaussians(*(getattr(self, f.name)[mask_or_index] for f in fields(self)))

    def to(self, *args, **kwargs) -> Gaussians:
        return Gaussians(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))

    def detach(self) -> Gaussians:
        return Gaussians(*(getattr(self, f.name).detach() for f in fields(self)))

    def replace(self, **changes: Tensor) -> Gaussians:
        return replace(self, **changes)

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check_finite(self) -> None:
        """Raise a ValueError naming the parameter and how many entries are NaN or infinite."""
        for name, value in self.tensors().items():
            if bool(torch.isfinite(value.detach().sum())):
                continue  # one NaN or inf makes the sum non-finite; a sum that overflows is checked in full below
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise ValueError(f"Gaussians.{name} has {int(bad.sum())} NaN or infinite value(s); "
                                 "refusing to render them (a diverged model or a corrupt file?)")

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        """Concatenate along the Gaussian dimension."""
        gaussian_dim = {"means": -2, "log_scales": -2, "quats": -2, "opacity_logits": -1, "sh": -3}
        return Gaussians(**{name: torch.cat([getattr(g, name) for g in items], dim=dim)
                            for name, dim in gaussian_dim.items()})

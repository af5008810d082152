"""antimatter15's ``.splat``: the compact web-viewer format (32 bytes per Gaussian, no header).

Per splat, little-endian::

    position  float32 x3   (12 bytes)
    scale     float32 x3   (12 bytes, linear standard deviations, not log)
    colour    uint8  x4    (RGBA: DC colour 0.5 + SH_C0 * f_dc clamped to [0, 1], alpha = sigmoid(opacity))
    rotation  uint8  x4    (normalised quaternion w, x, y, z encoded as q * 128 + 128, clamped to [0, 255])

Splats are sorted by descending ``scale_x * scale_y * scale_z * opacity``, the order antimatter15's
``convert.py`` writes and the viewer streams in (big, opaque splats first). Only the DC colour survives;
higher-order SH are dropped and everything but position and scale is quantised to 8 bits, so
:func:`load_splat` gives back an approximation. Colours and quaternions are rounded to the nearest code
(``convert.py`` truncates), which halves the quantisation error and reads identically in every viewer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..geometry.gaussians import Gaussians
from .atomic import atomic_output
from .ply import _require_unbatched

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
assert SPLAT_DTYPE.itemsize == 32


def gaussians_to_splat_records(gaussians: Gaussians) -> np.ndarray:
    _require_unbatched(gaussians, "a .splat file")
    g = gaussians.detach().to("cpu", torch.float32)
    scales = g.scales.numpy()
    opacities = g.opacities.numpy()
    order = np.argsort(-(scales.prod(axis=-1) * opacities), kind="stable")
    rgba = np.concatenate([g.rgb.clamp(0.0, 1.0).numpy(), opacities[:, None]], axis=-1)
    rot = g.rotations.numpy()
    records = np.empty(len(g), SPLAT_DTYPE)
    records["position"] = g.means.numpy()[order]
    records["scale"] = scales[order]
    records["rgba"] = np.round(rgba[order] * 255.0).astype(np.uint8)
    records["rot"] = np.clip(np.round(rot[order] * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return records


def save_splat(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write unbatched Gaussians as a ``.splat`` (atomically). Lossy: see the module docstring."""
    path = Path(path)
    records = gaussians_to_splat_records(gaussians)
    with atomic_output(path) as tmp:
        records.tofile(tmp)
    return path


def load_splat(path: str | os.PathLike) -> Gaussians:
    """Read a ``.splat`` into (SH degree 0) Gaussians, undoing the 8-bit encodings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if len(data) == 0:
        raise ValueError(f"{path.name}: empty .splat file, i.e. no Gaussians")
    if len(data) % SPLAT_DTYPE.itemsize:
        raise ValueError(f"{path.name}: {len(data)} bytes is not a whole number of 32-byte splats "
                         "(truncated or not a .splat file)")
    records = np.frombuffer(data, SPLAT_DTYPE)
    scales = torch.from_numpy(records["scale"].copy())
    if not bool((scales > 0).all()):
        raise ValueError(f"{path.name}: {int((scales <= 0).sum())} non-positive scale value(s); a .splat "
                         "stores linear scales, so this is not a valid .splat file")
    rgba = torch.from_numpy(records["rgba"].astype(np.float32) / 255.0)
    quats = torch.from_numpy((records["rot"].astype(np.float32) - 128.0) / 128.0)
    # All-128 codes decode to a zero quaternion; the identity is the only sensible reading of that.
    zero = quats.norm(dim=-1) < 1e-6
    quats[zero] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    quats = torch.nn.functional.normalize(quats, dim=-1)
    # Alpha 0 (fully transparent) maps to the smallest representable opacity instead of logit(0) = -inf.
    return Gaussians.from_activated(torch.from_numpy(records["position"].copy()), scales, quats,
                                    rgba[:, 3], rgba[:, :3])

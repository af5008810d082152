"""Files in and out: standard 3DGS PLY and ``.splat`` Gaussians, images, grids and videos."""

from __future__ import annotations

import os
from pathlib import Path

from ..geometry.gaussians import Gaussians
from .atomic import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text
from .media import image_grid, save_grid, save_image, to_uint8, write_gif, write_video
from .ply import load_ply, read_ply_vertices, save_ply
from .splat import load_splat, save_splat

SCENE_SUFFIXES = (".ply", ".splat")


def example_head_path() -> Path:
    """The bundled example splat (a stylised head; scripts/make_example_splat.py makes it)."""
    return Path(__file__).resolve().parents[1] / "assets" / "example_head.ply"


def load_gaussians(path: str | os.PathLike) -> Gaussians:
    """Load a ``.ply`` (standard 3DGS) or ``.splat`` file, chosen by the suffix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return load_ply(path)
    if suffix == ".splat":
        return load_splat(path)
    raise ValueError(f"{path}: unknown Gaussian file type {path.suffix!r}; expected .ply or .splat")


def save_gaussians(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Save as ``.ply`` (exact) or ``.splat`` (compact, lossy), chosen by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return save_ply(gaussians, path)
    if suffix == ".splat":
        return save_splat(gaussians, path)
    raise ValueError(f"{path}: unknown Gaussian file type {Path(path).suffix!r}; expected .ply or .splat")


__all__ = [
    "SCENE_SUFFIXES", "atomic_output", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "example_head_path", "image_grid", "load_gaussians", "load_ply", "load_splat", "read_ply_vertices",
    "save_gaussians", "save_grid", "save_image", "save_ply", "save_splat", "to_uint8", "write_gif", "write_video",
]

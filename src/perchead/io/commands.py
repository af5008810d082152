"""``perchead render``: any 3DGS ``.ply`` or ``.splat`` -> a turntable video and a labelled grid of views.

Framing rule (so an arbitrary file needs no camera options), in the frame given by ``--up``: take the box
between the opacity-weighted 1st and 99th percentiles of the Gaussians' 2-sigma extents along each axis
(so a few floaters far away change nothing). The cameras look at its centre, and stand back so that the
larger of its half-height and its horizontal half-diagonal (the widest it gets while turning) spans
``FILL`` = 60% of the half-frame at the chosen field of view, measured in a plane that much nearer to the
camera than the centre -- so the scene covers at most ~60% of the frame in every turntable and grid view.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from torch import Tensor

from ..geometry.cameras import focal_from_fov, intrinsics, orbit_viewmats, turntable_viewmats
from ..geometry.gaussians import Gaussians
from ..render import gsplat_available, rasterize
from . import SCENE_SUFFIXES, load_gaussians
from .atomic import atomic_output
from .media import (
    check_image_path,
    check_video_path,
    image_grid,
    save_image,
    to_uint8,
    write_video,
)

FILL = 0.6  # at most this fraction of the image is covered by the scene under automatic framing
BOX_QUANTILE = 0.99  # the framing box ignores the outermost 1% (by opacity) of Gaussians on each side
CHUNK = 8  # cameras rendered per rasterize() call: bounds memory for long, large turntables

# (label, yaw, pitch) of the grid. Positive yaw moves the camera towards the subject's left ear (+x).
GRID_VIEWS: tuple[tuple[str, float, float], ...] = (
    ("front", 0.0, 0.0), ("left profile", 90.0, 0.0), ("right profile", -90.0, 0.0),
    ("back", 180.0, 0.0), ("above", 0.0, 75.0), ("below", 0.0, -75.0),
)

# World -> canonical (+y up, front towards +z) rotations for the supported ``--up`` axes. "-y" suits
# OpenCV-world scenes (y down, seen by a camera looking along +z), "+z" Blender/Z-up scenes seen along +y.
UP_ROTATIONS: dict[str, tuple[tuple[float, ...], ...]] = {
    "+y": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "-y": ((1, 0, 0), (0, -1, 0), (0, 0, -1)),
    "+z": ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
    "-z": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
}
_NAMED_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5),
                      "gray": (0.5, 0.5, 0.5)}


def parse_background(text: str) -> tuple[float, float, float]:
    """'white', 'black', 'grey', or 'R,G,B' in [0, 1] (or 0-255 when any value is above 1)."""
    key = text.strip().lower()
    if key in _NAMED_BACKGROUNDS:
        return _NAMED_BACKGROUNDS[key]
    try:
        values = [float(v) for v in key.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--background {text!r}: use white, black, grey or R,G,B "
                         "(e.g. 1,1,1 or 255,255,255)")
    if any(v > 1.0 for v in values):
        if any(v > 255.0 for v in values):
            raise ValueError(f"--background {text!r}: 0-255 values must not exceed 255")
        values = [v / 255.0 for v in values]
    return values[0], values[1], values[2]


def _weighted_quantile(values: Tensor, weights: Tensor, q: float) -> Tensor:
    """Quantile ``q`` of each column of ``values`` [N, D] under weights [N] (lower value at ties)."""
    sorted_values, order = torch.sort(values, dim=0)
    cum = torch.cumsum(weights[order], dim=0)
    index = torch.searchsorted(cum.T.contiguous(), (q * cum[-1]).reshape(-1, 1)).clamp_max(len(values) - 1)
    return sorted_values.gather(0, index.T)[0]


def frame_scene(gaussians: Gaussians, fov_deg: float, up: str = "+y",
                fill: float = FILL) -> tuple[Tensor, float]:
    """Look-at target (world frame) and camera distance for automatic framing (module docstring)."""
    g = gaussians.detach().to("cpu", torch.float64)
    weights = g.opacities
    visible = weights >= 1.0 / 255.0  # below this a Gaussian draws nothing (the rasteriser's cut-off)
    if int(visible.sum()) == 0:
        raise ValueError("every Gaussian is (nearly) fully transparent: nothing to render")
    rot = torch.tensor(UP_ROTATIONS[up], dtype=torch.float64)
    means, weights = g.means[visible] @ rot.T, weights[visible]
    reach = 2.0 * g.scales[visible].max(dim=-1, keepdim=True).values
    lo = _weighted_quantile(means - reach, weights, 1.0 - BOX_QUANTILE)
    hi = _weighted_quantile(means + reach, weights, BOX_QUANTILE)
    half = ((hi - lo) / 2.0).clamp_min(1e-4)
    # Turning around the up axis shows at most the horizontal half-diagonal as half-width; looking from
    # above or below shows the horizontal extent too. Frame the larger of that and the half-height.
    r_side = float(torch.hypot(half[0], half[2]))
    frame_half = max(float(half[1]), r_side)
    # That half-size spans ``fill`` of the half-frame in a plane frame_half nearer than the target, so
    # perspective cannot push the nearest parts of the scene past it.
    distance = frame_half / (fill * math.tan(math.radians(fov_deg) / 2.0)) + frame_half
    target = rot.T @ ((lo + hi) / 2.0)
    return target.float(), distance


def _world_viewmats(canonical_viewmats: Tensor, up: str) -> Tensor:
    """Cameras placed in the canonical frame -> the same cameras in the file's own world frame."""
    world_to_canonical = torch.eye(4)
    world_to_canonical[:3, :3] = torch.tensor(UP_ROTATIONS[up], dtype=torch.float32)
    return canonical_viewmats @ world_to_canonical


def _render_frames(gaussians: Gaussians, viewmats: Tensor, K: Tensor, size: int,
                   background: tuple[float, float, float], backend: str, progress) -> Iterator[np.ndarray]:
    for start in range(0, len(viewmats), CHUNK):
        vm = viewmats[start:start + CHUNK].to(gaussians.means)
        with torch.no_grad():
            out = rasterize(gaussians, vm, K.to(gaussians.means).expand(len(vm), 3, 3), size, size,
                            background=background, backend=backend)
        for frame in to_uint8(out.rgb):
            progress.update(1)
            yield frame


def render(
    scene: Annotated[Path, tyro.conf.Positional],
    /,
    turntable: Path | None = None,
    grid: Path | None = None,
    size: int = 512,
    frames: int = 60,
    fps: float = 30.0,
    backend: Literal["auto", "cpu", "reference", "gsplat"] = "auto",
    background: str = "white",
    pitch: float = 10.0,
    yaw: float = 0.0,
    radius: float | Literal["auto"] = "auto",
    fov: float = 15.0,
    up: Literal["+y", "-y", "+z", "-z"] = "+y",
) -> int:
    """Render a 3D Gaussian splat (.ply in the standard 3DGS layout, or .splat) to a turntable video and/or
    a labelled grid of six views (front, left/right profile, back, above, below).

    Cameras look at the centre of the scene (robust to floaters) and stand back so that it fills at most
    ~60% of the frame (docs/io.md). Outputs are written only when everything rendered.

    Args:
        scene: input .ply (standard 3DGS layout, SH degree 0-3) or .splat file.
        turntable: output video (.mp4, .mov, .mkv or .gif): one full turn around the up axis.
        grid: output image (.png, .jpg): six labelled views.
        size: width and height of every view in pixels.
        frames: number of turntable frames.
        fps: turntable frame rate.
        backend: rasteriser; auto = gsplat on a CUDA GPU when installed, else the CPU kernels.
        background: white, black, grey, or R,G,B in 0-1 or 0-255.
        pitch: turntable camera elevation in degrees (positive = above).
        yaw: yaw in degrees of the turntable's first frame and the grid's front view.
        radius: camera distance in scene units, or auto (scene fills ~60% of the frame).
        fov: field of view in degrees.
        up: which world axis is up in the file (+y: 3DGS/OpenGL heads; -y: OpenCV-world scenes; +z: Z-up).
    """
    if turntable is None and grid is None:
        raise ValueError("nothing to write: give --turntable OUT.mp4 and/or --grid OUT.png")
    if not scene.exists():
        raise FileNotFoundError(f"{scene}: no such file")
    if scene.suffix.lower() not in SCENE_SUFFIXES:
        raise ValueError(f"{scene}: expected a .ply or .splat file, got {scene.suffix or 'no suffix'!r}")
    if turntable is not None:
        check_video_path(turntable)
    if grid is not None:
        check_image_path(grid)
    if size < 8 or frames < 1 or fps <= 0:
        raise ValueError(f"need --size >= 8, --frames >= 1 and --fps > 0 (got {size}, {frames}, {fps})")
    if not 0.0 < fov < 170.0:
        raise ValueError(f"--fov must be between 0 and 170 degrees, got {fov}")
    if radius != "auto" and not radius > 0:
        raise ValueError(f"--radius must be positive (or auto), got {radius}")
    bg = parse_background(background)

    device = "cuda" if backend == "gsplat" or (backend == "auto" and gsplat_available()) else "cpu"
    gaussians = load_gaussians(scene)
    gaussians.check_finite()  # before any output file is opened
    target_world, auto_radius = frame_scene(gaussians, fov, up)
    distance = auto_radius if radius == "auto" else float(radius)
    rot = torch.tensor(UP_ROTATIONS[up], dtype=torch.float32)
    target = (rot @ target_world).tolist()
    K = intrinsics(focal_from_fov(fov, size), width=size, height=size)
    if device == "cuda":
        gaussians = gaussians.to(device)
    centre = ", ".join(f"{v:.4g}" for v in target_world.tolist())
    print(f"{scene.name}: {len(gaussians):,} Gaussians (SH degree {gaussians.sh_degree}); cameras look at "
          f"({centre}) from {distance:.4g} units away", file=sys.stderr)

    from tqdm import tqdm

    written: list[str] = []
    with contextlib.ExitStack() as stack:
        # Every output goes to a temporary file that replaces its target only once all of them succeeded.
        if grid is not None:
            tmp_grid = stack.enter_context(atomic_output(grid))
            labels, yaws, pitches = zip(*GRID_VIEWS, strict=True)
            viewmats = _world_viewmats(orbit_viewmats([y + yaw for y in yaws], list(pitches), distance,
                                                      target), up)
            with tqdm(total=len(viewmats), desc="grid", unit="view", file=sys.stderr) as bar:
                views = list(_render_frames(gaussians, viewmats, K, size, bg, backend, bar))
            save_image(image_grid(views, ncols=3, labels=list(labels)), tmp_grid)
            written.append(f"{grid} ({len(views)} views, {size}x{size} each)")
        if turntable is not None:
            tmp_video = stack.enter_context(atomic_output(turntable))
            viewmats = _world_viewmats(turntable_viewmats(frames, distance, pitch, target, yaw), up)
            with tqdm(total=frames, desc="turntable", unit="frame", file=sys.stderr) as bar:
                frames_iter = _render_frames(gaussians, viewmats, K, size, bg, backend, bar)
                n = write_video(frames_iter, tmp_video, fps)
            written.append(f"{turntable} ({n} frames, {size}x{size}, {fps:g} fps)")
    for line in written:
        print(f"wrote {line}")
    return 0

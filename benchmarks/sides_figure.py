"""A figure of every side of several reconstructions: one row per `perchead reconstruct` output folder, with
the input crop, then the head from the estimated input camera turned by 0, +-45, +-90 (the profiles) and 180
degrees about the head's vertical axis, and from 30 degrees above.

    python benchmarks/sides_figure.py OUT1 OUT2 ... -o docs/images/fit_sides.png [--size 160]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TURNS = (("input crop", None, 0.0), ("input camera", 0.0, 0.0), ("+45", 45.0, 0.0), ("-45", -45.0, 0.0),
         ("+90", 90.0, 0.0), ("-90", -90.0, 0.0), ("back", 180.0, 0.0), ("above", 0.0, -30.0))


def row(folder: Path, size: int) -> list[np.ndarray]:
    from perchead.inference.fit import turned_viewmats
    from perchead.inference.pose import camera_K
    from perchead.io import load_gaussians
    from perchead.render import rasterize

    cam = json.loads((folder / "reconstruction.json").read_text())["input_camera"]
    viewmat = torch.tensor(cam["viewmat"], dtype=torch.float32)
    g = load_gaussians(folder / "head.ply")
    crop = np.asarray(Image.open(folder / "input_crop.png").convert("RGB").resize((size, size)))
    cells = [crop]
    for _, yaw, pitch in TURNS[1:]:
        vm = turned_viewmats(viewmat, (yaw,))
        if pitch:
            c, s = np.cos(np.radians(pitch)), np.sin(np.radians(pitch))
            rx = torch.eye(4)
            rx[1, 1], rx[1, 2], rx[2, 1], rx[2, 2] = float(c), float(-s), float(s), float(c)
            vm = vm @ rx
        with torch.no_grad():
            rgb = rasterize(g, vm, camera_K(size)[None], size, size, background=1.0).rgb[0]
        cells.append((rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    from perchead.io import image_grid

    cells = [c for folder in args.folders for c in row(folder, args.size)]
    labels = [label for label, _, _ in TURNS] * len(args.folders)
    Image.fromarray(image_grid(cells, ncols=len(TURNS), labels=labels)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

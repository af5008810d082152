"""Where does the network take the colour of the back of the head from, on real photos? (issue 27)

    python scripts/back_colour_probe.py demo [name=CKPT ...] --photos a.jpg b.jpg [--figure probe.png]

For every checkpoint and photo, the network alone (no fit) from the photo as it is, with its clothes masked out
of the input, and with its clothes repainted red: the back of the head's colour against the top of the photo's
head (``back_delta_e``, the CIE76 delta E that ``perchead reconstruct`` reports in reconstruction.json). A network
that takes the back's colour from the hair prints three equal numbers; one that reads the clothes does not.

"Clothes" here: the crop's foreground in its lowest 28% of rows, more than 12% of the width from the middle
column (a head-and-shoulders crop's shoulders, not its neck). ``--figure``: per checkpoint and photo, the crop
with the colour read's attention of the back Gaussians (the quarter of the Gaussians furthest behind, summed
over them) laid over it, and the back view as the network renders it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perchead.inference.fit import FitConfig, turned_viewmats
from perchead.inference.pose import camera_K
from perchead.inference.reconstruct import ReconstructConfig, Reconstructor
from perchead.render import rasterize

CLOTHES_ROWS, NECK_HALF_WIDTH = 0.72, 0.12
TILE = 192


def clothes_region(mask: torch.Tensor) -> torch.Tensor:
    """[1, 1, S, S] input mask -> [S, S] bool: the foreground where a crop shows shoulders."""
    s = mask.shape[-1]
    ys, xs = torch.meshgrid((torch.arange(s) + 0.5) / s, (torch.arange(s) + 0.5) / s, indexing="ij")
    return (mask[0, 0] > 0.5) & (ys > CLOTHES_ROWS) & ((xs - 0.5).abs() > NECK_HALF_WIDTH)


def predict_with_reads(rec: Reconstructor, image: torch.Tensor, mask: torch.Tensor):
    """The network's Gaussians for (image, mask), and an [S, S] map in [0, 1] of how much of the back
    Gaussians' read colour comes from each patch (None for a model without the colour read), from one pass."""
    read = getattr(getattr(rec.model, "heads", None), "colour_read", None)
    seen = {}
    hook = None if read is None else read.register_forward_hook(lambda mod, args, out: seen.update(args=args))
    try:
        with torch.no_grad():
            g = rec.model(image, mask)[0]
            weights = None if read is None else read.weights(*seen["args"])[0]  # [N, M]
    finally:
        if hook is not None:
            hook.remove()
    if weights is None:
        return g, None
    z = g.means[:, 2]  # the template faces +z
    back = z < z.min() + 0.25 * (z.max() - z.min())
    cfg = rec.model.config
    grid = torch.zeros(cfg.patch_grid**2)
    grid[seen["args"][1].patch_index[0]] = weights[back].sum(0)
    grid = grid.view(cfg.patch_grid, cfg.patch_grid)
    up = grid.repeat_interleave(cfg.patch_size, 0).repeat_interleave(cfg.patch_size, 1)
    before, _ = cfg.patch_padding
    up = up[before:before + cfg.image_size, before:before + cfg.image_size]
    return g, (up / up.max().clamp_min(1e-12)).numpy()


def back_view(rec: Reconstructor, gaussians, pose, size: int = TILE) -> np.ndarray:
    vm = turned_viewmats(pose.viewmat, (180.0,))
    with torch.no_grad():
        out = rasterize(gaussians, vm, camera_K(size)[None], size, size, background=1.0)
    return (out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="CKPT or name=CKPT (a folder or 'demo')")
    ap.add_argument("--photos", nargs="+", type=Path, required=True)
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args()
    named = [c.split("=", 1) if "=" in c else (Path(c).name or c, c) for c in args.checkpoints]
    print("| checkpoint | photo | as it is | clothes masked out | clothes red |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for name, ckpt in named:
        rec = Reconstructor(ReconstructConfig(checkpoint=ckpt, fit=FitConfig(steps=0), progress=False))
        for photo in args.photos:
            pre = rec.preprocess(photo)
            image, mask = rec.network_inputs(pre)
            g, heat = predict_with_reads(rec, image, mask)
            pose, _ = rec.fit(g, pre)  # no fit steps: the estimated camera only
            clothes = clothes_region(mask)
            masked, red = mask.clone(), image.clone()
            masked[0, 0][clothes] = 0.0
            red[0, :, clothes] = torch.tensor([0.8, 0.15, 0.15])[:, None]
            heads = [g]
            for img, msk in ((image, masked), (red, mask)):
                with torch.no_grad():
                    heads.append(rec.model(img, msk)[0])
            values = [rec.back_delta_e(h, pose, pre) for h in heads]
            print(f"| {name} | {photo.name} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.1f}" for v in values)
                  + " |", flush=True)
            if args.figure is not None:
                crop = np.asarray(Image.fromarray(np.asarray(pre.crop)).resize((TILE, TILE)), dtype=np.float32) / 255
                if heat is not None:
                    heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((TILE, TILE)),
                                      dtype=np.float32)[..., None] / 255
                    crop = crop * (1 - 0.6 * heat) + 0.6 * heat * np.array([1.0, 0.85, 0.0])
                rows.append(((crop * 255).round().astype(np.uint8), back_view(rec, g, pose), f"{name}: {photo.name}"))
    if args.figure is not None:
        write_figure(rows, args.figure)
        print(f"wrote {args.figure}")


def write_figure(rows: list[tuple[np.ndarray, np.ndarray, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(rows)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols + 1.2, 4.2), squeeze=False)
    for c, (crop, back, title) in enumerate(rows):
        axes[0, c].imshow(crop)
        axes[0, c].set_title(title, fontsize=7)
        axes[1, c].imshow(back)
        for a in axes[:, c]:
            a.axis("off")
    axes[0, 0].text(-0.08, 0.5, "where the back\nGaussians read", transform=axes[0, 0].transAxes, ha="right",
                    va="center", fontsize=8)
    axes[1, 0].text(-0.08, 0.5, "back view\n(no fit)", transform=axes[1, 0].transAxes, ha="right", va="center",
                    fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

"""Compare pixel-loss weightings for SHP-CNN in minutes, on the validation split (how the demo's were chosen).

    python scripts/tune_shp_loss.py --checkpoint outputs/demo/reconstruct/checkpoints/step_00005000 \
        --data outputs/demo/data --weights 0.8,0.2,0 0,0,1 0,0.3,1

The 3D part is frozen in the sharpen stage, so its renders do not change while SHP-CNN trains. This script
renders them once (the trainer's sampler and batches, ``--samples`` training and ``--val-samples`` validation
samples) and then fits a fresh SHP-CNN of the checkpoint's size to the cached renders for every weighting
``l1,ssim,mse`` of the "pixel" loss (``--loss.l1-weight`` ... of ``perchead train``), at the demo's sharpen lr
and a cosine schedule. It prints validation PSNR and SSIM (clamped to [0, 1], mean over views) of the raw
renders and after each fit. A quick, noisy guide: the held-out numbers come from ``perchead eval-heldout``
on the checkpoint that ``perchead train --stage sharpen`` makes.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from perchead.data.format import HeadDataset, read_dataset
from perchead.eval.metrics import psnr, ssim
from perchead.losses import LossConfig, build_loss
from perchead.model import PercHead
from perchead.model.lifting import batch_input_camera
from perchead.model.shp_cnn import ShpCnn
from perchead.train import DataConfig, TrainStep
from perchead.train.data import PositionDataset, collate
from perchead.train.trainer import lr_lambda


def cached_renders(model: PercHead, dataset: HeadDataset, split: str, samples: int,
                   batch: int) -> tuple[torch.Tensor, ...]:
    """(raw renders, targets) [N, 3, S, S] of every real view of the first ``samples`` sample positions."""
    positions = PositionDataset(dataset, split, DataConfig(batch_size=batch), seed=0)
    step = TrainStep(model, "reconstruct", None, "auto", False)
    size = model.config.image_size
    raws, targets = [], []
    for start in range(0, samples, batch):
        b = collate([positions[i] for i in range(start, min(start + batch, samples))], size, size)
        with torch.no_grad():
            camera = batch_input_camera(model.config, b.viewmats, b.Ks, size)
            rgb = step.predict(b.input_image, b.input_mask, b.viewmats, b.Ks, size, camera=camera)
        raws.append(rgb[b.valid])
        targets.append(b.targets[b.valid])
    return torch.cat(raws), torch.cat(targets)


def scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    pred = pred.clamp(0, 1)
    return float(psnr(pred, target).mean()), float(ssim(pred, target).mean())


def fit(model: PercHead, weights: LossConfig, train: tuple[torch.Tensor, ...], args: argparse.Namespace) -> ShpCnn:
    torch.manual_seed(0)
    net = ShpCnn(model.config.shp_channels, model.config.shp_blocks)
    loss_fn = build_loss("pixel", weights)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, warmup=0, total=args.steps, min_ratio=0.1))
    raw, target = train
    for _ in range(args.steps):
        idx = torch.randint(0, len(raw), (args.batch,))
        loss = loss_fn(net(raw[idx]), target[idx])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a reconstruct-stage checkpoint (its SHP-CNN is ignored)")
    ap.add_argument("--data", required=True, help="the dataset it was trained on (train and val splits)")
    ap.add_argument("--weights", nargs="+", default=["0.8,0.2,0", "0,0,1", "0,0.3,1"],
                    help="l1,ssim,mse weightings of the pixel loss to compare")
    ap.add_argument("--samples", type=int, default=1000, help="training sample positions to render")
    ap.add_argument("--val-samples", type=int, default=120)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16, help="views per SHP-CNN step")
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    weightings = [tuple(float(w) for w in text.split(",")) for text in args.weights]
    if any(len(w) != 3 for w in weightings):
        raise SystemExit("--weights: each weighting is three numbers, l1,ssim,mse")
    losses = [LossConfig(l1_weight=l1, ssim_weight=ssim_w, mse_weight=mse) for l1, ssim_w, mse in weightings]
    for text, loss in zip(args.weights, losses, strict=True):
        if loss.pixel_weights_problem():
            raise SystemExit(f"--weights {text}: {loss.pixel_weights_problem()}")

    model = PercHead.from_pretrained(args.checkpoint).eval()
    t0 = time.perf_counter()
    dataset = read_dataset(args.data)
    train = cached_renders(model, dataset, "train", args.samples, 4)
    val = cached_renders(model, dataset, "val", args.val_samples, 4)
    print(f"rendered {len(train[0])} training and {len(val[0])} validation views in "
          f"{time.perf_counter() - t0:.0f} s; SHP-CNN {model.config.shp_channels} channels x "
          f"{model.config.shp_blocks} blocks, {args.steps} steps of {args.batch} views, lr {args.lr:g}, "
          f"torch threads {torch.get_num_threads()}")
    print("| l1 | ssim | mse | val PSNR | val SSIM | minutes |\n|---:|---:|---:|---:|---:|---:|")
    print("| raw renders | | | {:.3f} | {:.4f} | |".format(*scores(*val)))
    for weights, loss in zip(weightings, losses, strict=True):
        t0 = time.perf_counter()
        net = fit(model, loss, train, args)
        with torch.no_grad():
            pred = torch.cat([net(chunk) for chunk in val[0].split(64)])
        p, s = scores(pred, val[1])
        print(f"| {weights[0]:g} | {weights[1]:g} | {weights[2]:g} | {p:.3f} | {s:.4f} | "
              f"{(time.perf_counter() - t0) / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()

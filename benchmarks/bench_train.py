"""Training steps per second of the trainer's step on this machine, per preset.

    python benchmarks/bench_train.py [--presets tiny,small] [--batch 2] [--views 4] [--steps 5] [--threads 2]

One step = network forward on the input view -> rasterize the target views -> loss -> backward -> gradient
clipping -> AdamW, exactly the trainer's TrainStep. Inputs are toy heads (perchead.train.testing) at the
preset's input size, rendered and supervised at --render-size (default: the input size). The loss is the
pixel loss (L1 + SSIM), because DINOv2 / SAM 2.1 weights are not available offline; the perceptual loss adds
its frozen networks' cost on top. Presets with a DINOv2 branch run without it (dino=None) for the same
reason, which the table says. The first step (numba JIT, allocator warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time


def bench(preset_name: str, batch: int, views: int, steps: int, render_size: int | None) -> dict:
    import torch

    from perchead.losses import build_loss
    from perchead.model import PercHead, preset
    from perchead.train import DataConfig, TrainStep
    from perchead.train.data import PositionDataset, collate
    from perchead.train.testing import write_toy_dataset
    from perchead.train.trainer import param_groups

    cfg = preset(preset_name)
    note = ""
    if cfg.dino is not None:
        cfg = cfg.replace(dino=None, dino_layers=())
        note = "no DINOv2 branch"
    size = render_size or cfg.image_size
    model = PercHead(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_toy_dataset(tmp, subjects=2, views=views, size=size, val=0)
        ds = PositionDataset(data, "train", DataConfig(target_views=views - 1, studio_fraction=1.0), seed=0)
        b = collate([ds[i] for i in range(batch)], cfg.image_size, size)
    step = TrainStep(model, "reconstruct", build_loss("pixel"), "cpu", bf16=False)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("shp_cnn.")]
    opt = torch.optim.AdamW(param_groups(named, 0.05), lr=1e-4)
    params = [p for _, p in named]

    def one() -> None:
        loss, _, _ = step(b.input_image, b.input_mask, b.viewmats, b.Ks, b.targets, b.valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    one()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"preset": preset_name, "gaussians": cfg.num_gaussians, "input": cfg.image_size, "render": size,
            "views": b.targets.shape[1], "batch": batch, "s_per_step": med, "steps_per_s": 1.0 / med, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--views", type=int, default=4, help="views per sample (1 input + targets)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--render-size", type=int, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} thread(s); pixel loss; median of {args.steps} steps after 1 warm-up")
    rows = [bench(p, args.batch, args.views, args.steps, args.render_size) for p in args.presets.split(",")]
    header = f"{'preset':8} {'gaussians':>9} {'input':>5} {'render':>6} {'views':>5} {'batch':>5} " \
             f"{'s/step':>8} {'steps/s':>8}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['preset']:8} {r['gaussians']:9d} {r['input']:5d} {r['render']:6d} {r['views']:5d} {r['batch']:5d} "
              f"{r['s_per_step']:8.3f} {r['steps_per_s']:8.3f}  {r['note']}")


if __name__ == "__main__":
    main()

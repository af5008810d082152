"""Forward+backward time and peak memory of each training loss at 128, 256 and 512 px renders.

    python benchmarks/bench_losses.py                 # all losses, 128/256/512, 2 timed repeats
    python benchmarks/bench_losses.py --losses dino sam --sizes 256 --repeats 3

The frozen networks are built from the real architectures' configs (DINOv2 ViT-S/14 = facebook/dinov2-small,
SAM 2.1 Hiera-S = facebook/sam2.1-hiera-small) with RANDOM weights: the numbers are valid for timing and memory
only (compute does not depend on weight values), never for loss values.

Method: every case runs in a fresh subprocess, so one case's allocations cannot hide another's peak. Inside it,
the models and a [B,3,S,S] pred (requires_grad) / target pair are built, one untimed warm-up forward+backward
runs, then ``repeats`` timed ones (median reported). Memory: "extra MiB" is the peak resident set size during
the forward+backward passes (warm-up included: glibc keeps freed memory, so a later pass would look cheaper)
minus the RSS just before them, sampled from /proc/self/statm every 1 ms by a thread (torch's CPU allocations
are invisible to tracemalloc); "proc MiB" is the process's whole-life peak RSS
(``resource.getrusage(...).ru_maxrss``), which includes the Python interpreter, torch and the frozen weights.
"load" is the 1-minute load average when the case ended: on a shared machine, times grow with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

LOSSES = ("perceptual", "dino", "sam", "sharpen", "l1", "ssim", "pixel")
NEEDS_DINO = {"perceptual", "dino", "sharpen"}
NEEDS_SAM = {"perceptual", "sam"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread; ``peak`` is the highest value seen."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def run_case(loss_name: str, size: int, variant: str, batch: int, repeats: int, threads: int) -> dict:
    import torch
    from transformers import Dinov2Model, Sam2Model

    from perchead.losses import LossConfig, Sam2ImageEncoder, build_loss
    from perchead.losses.dino import DinoLossConfig, sharpen_loss_config
    from perchead.losses.sam import SamLossConfig
    from perchead.losses.testing import dinov2_small_config, sam21_hiera_small_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = LossConfig()
    if variant == "for_render":  # the "lower feature resolution for small renders" option
        cfg.dino, cfg.sam = DinoLossConfig.for_render(size), SamLossConfig.for_render(size)
        cfg.sharpen = sharpen_loss_config(resize=cfg.dino.resize, crop=cfg.dino.crop)
    elif variant == "checkpointing":
        for c in (cfg.dino, cfg.sam, cfg.sharpen):
            c.gradient_checkpointing = True
    dino = Dinov2Model(dinov2_small_config()).eval() if loss_name in NEEDS_DINO else None
    sam = None
    if loss_name in NEEDS_SAM:
        full = Sam2Model(sam21_hiera_small_config())
        sam = Sam2ImageEncoder(full.vision_encoder, full.no_memory_embedding, "random hiera-s").eval()
        del full
    loss = build_loss(loss_name, cfg, dino_model=dino, sam_encoder=sam)
    pred = torch.rand(batch, 3, size, size, requires_grad=True)
    target = torch.rand(batch, 3, size, size)

    def step():
        pred.grad = None
        loss(pred, target).backward()

    times = []
    before = _rss_bytes()
    with PeakRSS() as peak:
        step()  # untimed warm-up (oneDNN kernels, allocator); its memory peak is the cold one, so it counts
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    dino_cfg = cfg.sharpen if loss_name == "sharpen" else cfg.dino
    return {
        "loss": loss_name,
        "variant": variant,
        "size": size,
        "dino_input": f"{dino_cfg.resize}->{dino_cfg.crop}" if loss_name in NEEDS_DINO else "",
        "sam_input": str(cfg.sam.resolution) if loss_name in NEEDS_SAM else "",
        "seconds": statistics.median(times),
        "extra_mib": (peak.peak - before) / 2**20,
        "proc_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load": os.getloadavg()[0],
    }


def machine_info(threads: int) -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({threads} threads), "
        f"transformers {transformers.__version__}, python {platform.python_version()}, device: cpu"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default", "for_render", "checkpointing"],
        choices=["default", "for_render", "checkpointing"],
        help="for_render: lower feature resolution (sizes < 512, DINO/SAM losses); "
        "checkpointing: gradient checkpointing of the frozen nets (perceptual at the largest size)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()

    if args.case:
        loss_name, size, variant = args.case.split(":")
        print(json.dumps(run_case(loss_name, int(size), variant, args.batch, args.repeats, args.threads)))
        return

    cases = [(name, size, "default") for name in args.losses for size in args.sizes]
    if "for_render" in args.variants:
        cases += [(n, s, "for_render") for n in args.losses if n in {"perceptual", "dino", "sam"}
                  for s in args.sizes if s < 512]  # fmt: skip
    if "checkpointing" in args.variants and "perceptual" in args.losses:
        cases.append(("perceptual", max(args.sizes), "checkpointing"))

    print(machine_info(args.threads))
    print(
        f"batch {args.batch}, median of {args.repeats} timed forward+backward passes after 1 warm-up; "
        "frozen nets: DINOv2 ViT-S/14 and SAM 2.1 Hiera-S architectures with RANDOM weights (timing only)"
    )
    header = f"{'loss':<11} {'variant':<13} {'render':>6} {'DINO in':>9} {'SAM in':>6} {'fwd+bwd s':>9} "
    header += f"{'extra MiB':>9} {'proc MiB':>8} {'load':>5}"
    print(header)
    print("-" * len(header))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for name, size, variant in cases:
        cmd = [sys.executable, __file__, "--case", f"{name}:{size}:{variant}", "--batch", str(args.batch),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{name:<11} {variant:<13} {size:>6} FAILED: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{r['loss']:<11} {r['variant']:<13} {r['size']:>6} {r['dino_input']:>9} {r['sam_input']:>6} "
            f"{r['seconds']:>9.3f} {r['extra_mib']:>9.0f} {r['proc_mib']:>8.0f} {r['load']:>5.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

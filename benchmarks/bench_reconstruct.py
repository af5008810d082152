"""``perchead reconstruct`` time per stage for one photo on this machine: load, preprocess, network, fit,
render, write -- every output included (head.ply, head.splat, turntable.mp4, views.png, input_view.png, crop,
mask, json) -- with and without the fit to the photo (``--fit-steps 0,60``).

    python benchmarks/bench_reconstruct.py [--presets tiny,small] [--size 512] [--frames 60] [--runs 3]
    python benchmarks/bench_reconstruct.py --checkpoint demo --cli    # + the whole command, as a user runs it

Weights are random (no trained checkpoint is needed to measure cost): each preset is built, saved with
``save_pretrained`` and loaded back through ``Reconstructor`` exactly as ``--checkpoint`` does; for presets
with a DINOv2 branch a random DINOv2 of the preset's exact architecture is saved too and passed as ``--dino``.
The SHP-CNN's last layer gets small random weights (an untrained one is the identity and is skipped; a
trained one is not), so its cost is counted unless ``--no-sharpen``. Random Gaussians are semi-transparent
(opacity ~0.1), so nothing terminates early in the rasteriser: a trained model's opaque heads render at
least as fast. The photo is the bundled example (the astronaut).

"cold" is the first photo after loading (MediaPipe models and the numba kernels' on-disk cache are loaded
then; presets share one process, so only the first preset listed pays for those); "warm" is the median of
``--runs`` further photos, which is what every photo of a batch costs. ``--cli`` adds the wall time of the
whole ``perchead reconstruct`` command in a fresh process (Python start, imports and all), once per setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHOTO = Path(__file__).resolve().parents[1] / "src" / "perchead" / "assets" / "example_photo.jpg"


def cpu_name() -> str:
    """CPU model and vector instruction set, e.g. "AMD EPYC (AVX-512 F/BW/DQ/VL, AVX2, FMA)": the numba
    kernels are compiled for the host's widest vectors, so timings depend on both."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    avx512 = [f.removeprefix("avx512").upper() for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl") if f in flags]
    isa = ([f"AVX-512 {'/'.join(avx512)}"] if avx512 else []) + [name for flag, name in
                                                                  (("avx2", "AVX2"), ("fma", "FMA")) if flag in flags]
    return f"{model} ({', '.join(isa) or 'no AVX2'})" if flags else model


def build_checkpoint(name: str, root: Path, trained_shp: bool) -> tuple[Path, Path | None]:
    import torch

    from perchead.model import PercHead, preset
    from perchead.model.encoder import dinov2_config, dinov2_from_config

    torch.manual_seed(0)
    cfg = preset(name)
    dino_dir = None
    dino = None
    if cfg.dino is not None:
        dino = dinov2_from_config(dinov2_config(cfg.dino))
        dino_dir = root / f"{name}-dino"
        dino.save_pretrained(dino_dir)
    model = PercHead(cfg, dino=dino)
    if trained_shp and model.shp_cnn is not None:
        # An untrained SHP-CNN is the identity and skipped; a trained one is not: make it count.
        torch.nn.init.normal_(model.shp_cnn.tail.weight, std=1e-3)
    model.save_pretrained(root / name)
    return root / name, dino_dir


def bench(name: str, args, root: Path, fit_steps: int) -> list[tuple[str, dict[str, float]]]:
    import logging

    from perchead.inference import STAGES, FitConfig, ReconstructConfig, Reconstructor

    logging.getLogger("perchead.preprocess").setLevel(logging.ERROR)
    if args.checkpoint:  # a real checkpoint (e.g. the bundled demo): its own weights and SHP-CNN
        ckpt, dino = args.checkpoint, None
    else:
        ckpt, dino = build_checkpoint(name, root, trained_shp=not args.no_sharpen)
    config = ReconstructConfig(checkpoint=str(ckpt), dino=None if dino is None else str(dino),
                               device=args.device, size=args.size, frames=args.frames,
                               video=not args.no_video, sharpen=not args.no_sharpen,
                               fit=FitConfig(steps=fit_steps), likeness=not args.no_likeness)
    rec = Reconstructor(config)
    rows = []
    runs = []
    for i in range(args.runs + 1):
        start = time.perf_counter()
        result = rec.run(PHOTO, root / f"out-{name}-{i}")
        wall = time.perf_counter() - start
        times = {s: getattr(result.times, s) for s in STAGES[1:]}
        times["wall"] = wall
        if i == 0:  # a fresh process reconstructing one photo: load + the first photo
            rows.append(("cold: load + 1st photo", {"load": rec.times.load, **times,
                                                    "wall": rec.times.load + wall}))
        else:
            runs.append(times)
    warm = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rows.append((f"warm (median of {args.runs})", {"load": 0.0, **warm}))
    cfg = rec.model.config
    print(f"  {name}, fit {fit_steps} steps: {cfg.num_gaussians:,} Gaussians predicted, "
          f"model input {cfg.image_size} px, "
          f"DINOv2 {'random ' + cfg.dino if dino else 'off'}, SHP-CNN {'on' if rec.sharpens else 'off'}, "
          f"device {rec.device}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default=None,
                        help="time this checkpoint (folder, hub id or 'demo') instead of random-weight presets")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--no-sharpen", action="store_true", help="no SHP-CNN pass over the renders")
    parser.add_argument("--fit-steps", default="0,60", help="comma-separated fit settings to time (0 = no fit)")
    parser.add_argument("--no-likeness", action="store_true", help="skip the dlib likeness measurement")
    parser.add_argument("--cli", action="store_true",
                        help="also time the whole `perchead reconstruct` command in a fresh process")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and numba threads (default: theirs = logical CPUs); 1 can win when busy")
    args = parser.parse_args()
    if args.cli and not args.checkpoint:
        parser.error("--cli times a real command: give --checkpoint (e.g. demo)")

    import numba
    import torch

    from perchead.inference import STAGES, set_threads

    if args.threads:
        set_threads(args.threads)

    load_before = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} torch / {numba.get_num_threads()} numba threads), "
          f"python {platform.python_version()}")
    frames = 0 if args.no_video else args.frames
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else "random weights"
    fits = [int(v) for v in args.fit_steps.split(",")]
    print(f"settings: views {args.size}x{args.size} (6 + the input view), turntable {frames} frames at the "
          f"default video size, fit steps {fits} (the default fit size and Gaussians), "
          f"likeness {'off' if args.no_likeness else 'on'}, {weights}, photo {PHOTO.name}, device {args.device}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.checkpoint] if args.checkpoint else args.presets.split(","):
            for steps in fits:
                for label, row in bench(name.strip(), args, Path(tmp), steps):
                    results.append((name.strip(), steps, label, row))
        cli = [(steps, run_cli(args, Path(tmp), steps)) for steps in fits] if args.cli else []
    load_after = os.getloadavg()

    header = f"| preset | fit steps | run | {' | '.join(STAGES)} | sum of stages | wall |"
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, steps, label, row in results:
        total = sum(row[s] for s in STAGES)
        cells = " | ".join("-" if s == "load" and not row[s] else f"{row[s]:.2f}" for s in STAGES)
        print(f"| {name} | {steps} | {label} | {cells} | {total:.2f} | {row['wall']:.2f} |")
    blank = " | ".join("-" for _ in STAGES)
    for steps, wall in cli:
        print(f"| {args.checkpoint} | {steps} | whole command (fresh process) | {blank} | - | {wall:.2f} |")
    print(f"\nseconds; load average (1/5/15 min) {', '.join(f'{v:.1f}' for v in load_before)} before, "
          f"{', '.join(f'{v:.1f}' for v in load_after)} after "
          f"(above {os.cpu_count()} = the CPU was shared with other jobs)")


def run_cli(args, root: Path, fit_steps: int) -> float:
    """Wall seconds of ``perchead reconstruct PHOTO`` in a new Python process, with this run's settings."""
    cmd = [sys.executable, "-m", "perchead", "reconstruct", str(PHOTO), "-o", str(root / f"cli-{fit_steps}"),
           "--checkpoint", args.checkpoint, "--size", str(args.size), "--frames", str(args.frames),
           "--device", args.device, "--fit-steps", str(fit_steps), "--no-progress"]
    cmd += ["--no-video"] * args.no_video + ["--no-sharpen"] * args.no_sharpen + ["--no-likeness"] * args.no_likeness
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

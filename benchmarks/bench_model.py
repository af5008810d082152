"""Image -> Gaussians latency, peak memory and decoder GFLOP/s of each model preset on this CPU.

    python benchmarks/bench_model.py [--presets tiny,small,base,paper] [--threads 2] [--runs 5]

Each preset runs in its own subprocess so that the peak resident memory (ru_maxrss) is its own. Weights are
random: the DINOv2 branch is a model of the preset's exact architecture (from its hub config) with random
weights -- the cost is the same as with the real weights, the outputs are meaningless. The decoder's FLOPs
are counted with torch.utils.flop_counter.FlopCounterMode (checked against the analytic count) and divided
by its measured time; a plain fp32 matmul measured in the same process gives the machine's reference rate.
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
import time


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _decoder_flops_analytic(cfg, m: int) -> tuple[float, float]:
    """(all decoder FLOPs, the attention part QK^T + AV) for T template tokens and m image tokens."""
    t, w, c = cfg.num_tokens, cfg.width, cfg.f2d_width
    hidden = int(w * cfg.mlp_ratio)
    attention = 2 * 2 * t * m * w
    per_layer = 2 * t * w * w * 2 + 2 * m * c * 2 * w + attention + 2 * 2 * t * w * hidden
    return cfg.layers * per_layer, cfg.layers * attention


def worker(name: str, threads: int, runs: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from perchead.model import HeadTemplate, PercHead, preset
    from perchead.model.encoder import dinov2_config, dinov2_from_config

    torch.set_num_threads(threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = preset(name)
    dino = None if cfg.dino is None else dinov2_from_config(dinov2_config(cfg.dino))
    template = HeadTemplate.builtin(cfg.template_resolution)
    model = PercHead(cfg, template=template, dino=dino).eval()
    s = cfg.image_size
    image = torch.rand(1, 3, s, s)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    mask = (((xx / 0.8) ** 2 + (yy / 0.9) ** 2) <= 1).float()[None, None]  # a head-sized ellipse

    big = name == "paper"  # ~4 TFLOP per image here: one run, no warm-up, no FLOP counting pass
    timings = []
    with torch.inference_mode():
        for _ in range(1 if big else runs + 1):  # one pass = the forward, split into its stages
            t0 = time.perf_counter()
            tokens = model.encode(image, mask)
            t1 = time.perf_counter()
            features = model.decoder(tokens.tokens, tokens.valid, model.initial_tokens())
            t2 = time.perf_counter()
            model.heads(features, model.template)
            t3 = time.perf_counter()
            timings.append((t3 - t0, t1 - t0, t2 - t1))
        timings = timings if big else timings[1:]  # drop the warm-up
        latency, encode_t, decode_t = (statistics.median(t[i] for t in timings) for i in range(3))
        flops = float("nan")
        if not big:
            with FlopCounterMode(display=False) as counter:
                model.decoder(tokens.tokens, tokens.valid, model.initial_tokens())
            flops = counter.get_total_flops()
        a = torch.randn(2048, 2048)
        b = torch.randn(2048, 2048)
        a @ b
        mm_t = _median_time(lambda: a @ b, 5)
    m = int(tokens.valid.sum())
    analytic, attention = _decoder_flops_analytic(cfg, m)
    # The timed decoder stage also embeds the template tokens (Linear on 16 x 78 Fourier features).
    analytic += 2 * cfg.num_tokens * model.decoder.embed.proj.in_features * cfg.width
    return {
        "preset": name, "image": s, "gaussians": cfg.num_gaussians, "kept_patches": m,
        "patches": cfg.patch_grid**2, "dino": cfg.dino or "off",
        "latency_s": latency, "encode_s": encode_t, "decode_s": decode_t,
        # FlopCounterMode does not count CPU SDPA: the rate uses the analytic count, and the counter plus
        # the analytic attention part checks it.
        "decoder_gflop": analytic / 1e9, "decoder_gflop_counted": (flops + attention) / 1e9,
        "decoder_gflops": analytic / 1e9 / decode_t, "matmul_gflops": 2 * 2048**3 / 1e9 / mm_t,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_start_mb": rss_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,base,paper")
    parser.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 1,2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, int(args.threads), args.runs)))
        return

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"torch {torch.__version__}, fp32, batch 1, inference_mode; median of {args.runs} runs after a "
          "warm-up (paper: 1 run, no warm-up)")
    print("weights: random; DINOv2 branch = random-weight model of the preset's exact architecture")
    rows = []
    for name in args.presets.split(","):
        for threads in args.threads.split(","):
            out = subprocess.run([sys.executable, __file__, "--worker", name, "--threads", threads,
                                  "--runs", str(args.runs)], capture_output=True, text=True)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-2000:]}")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"threads": int(threads)})
    head = (f"{'preset':<6} {'thr':>3} {'px':>4} {'Gauss':>6} {'patches':>9} {'DINOv2 (random weights)':<28} "
            f"{'img->G s':>9} {'enc s':>7} {'dec s':>7}"
            f" {'dec GFLOP':>9} {'dec GF/s':>8} {'mm GF/s':>8} {'dec/mm':>6} {'peak MB':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['preset']:<6} {r['threads']:>3} {r['image']:>4} {r['gaussians']:>6} "
              f"{r['kept_patches']:>4}/{r['patches']:<4} {r['dino'].removeprefix('facebook/'):<28} "
              f"{r['latency_s']:>9.3f} {r['encode_s']:>7.3f} {r['decode_s']:>7.3f} "
              f"{r['decoder_gflop']:>9.2f} {r['decoder_gflops']:>8.1f} {r['matmul_gflops']:>8.1f} "
              f"{r['decoder_gflops'] / r['matmul_gflops']:>6.0%} {r['peak_rss_mb']:>8.0f}")
    if rows:
        print("\npatches: foreground patches kept / all (ellipse mask). dec GFLOP: analytic count of the "
              "decoder layers; FlopCounterMode's count + analytic SDPA part: "
              + ", ".join(f"{r['preset']}/{r['threads']} {r['decoder_gflop_counted']:.2f}" for r in rows
                          if r["decoder_gflop_counted"] == r["decoder_gflop_counted"])  # skips NaN (paper)
              + f". peak MB: peak RSS of the preset's own process (after imports: {rows[0]['rss_start_mb']:.0f} MB)")


if __name__ == "__main__":
    main()

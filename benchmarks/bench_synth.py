"""Time the synthetic-head generator (``perchead synth``) and the head surface map; prints a table.

    python benchmarks/bench_synth.py                       # 100 subjects x 16 views at 256 px (the target)
    python benchmarks/bench_synth.py --subjects 10 --views 16 --size 256

The first render compiles the numba kernels (cached on disk afterwards); it is timed separately as warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", default="studio", choices=["studio", "wild", "mixed"])
    # Symmetric by default: the timings in docs/data.md were measured on them (an asymmetric head has from
    # 2k fewer Gaussians, long hair tucked behind an ear, to 1.5k more, a lock and a hoop: subjects 0-5, seed 0).
    ap.add_argument("--heads", default="symmetric", choices=["symmetric", "asymmetric"])
    ap.add_argument("--out", type=Path, default=None, help="keep the dataset here (default: a temp folder)")
    args = ap.parse_args()

    import numba

    from perchead.data.synth import SynthConfig, generate, make_subject, write_synth_subject
    from perchead.geometry.head_surface import head_surface_map

    rows = []
    t = time.perf_counter()
    head_surface_map()
    rows.append(("head_surface_map(resolution=256)", time.perf_counter() - t, ""))

    cfg = SynthConfig(subjects=args.subjects, views=args.views, size=args.size, seed=args.seed, kind=args.kind,
                      heads=args.heads)
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        t = time.perf_counter()
        write_synth_subject(SynthConfig(subjects=1, views=1, size=32), make_subject(SynthConfig(views=1, size=32), 0),
                            warm)
        rows.append(("warm-up (numba JIT / cache load)", time.perf_counter() - t, ""))

        t = time.perf_counter()
        s = make_subject(cfg, 0)
        t_build = time.perf_counter() - t
        rows.append(("build one subject's Gaussians", t_build, f"{len(s.gaussians)} Gaussians"))

        out = args.out or Path(tmp) / "data"
        t, cpu = time.perf_counter(), time.process_time()
        report = generate(cfg, out, progress=False)
        total, cpu = time.perf_counter() - t, time.process_time() - cpu
        rows.append((f"generate {args.subjects} x {args.views} views @ {args.size}px", total,
                     f"{total / max(report.written, 1):.2f} s/subject, written {report.written}, "
                     f"skipped {report.skipped}"))
        # CPU seconds used by this process (all its threads): less sensitive to other jobs on a shared machine
        # than wall time; an idle 2-core machine needs between cpu/2 and cpu seconds of wall time.
        rows.append(("  same, CPU time of this process", cpu, f"{cpu / max(report.written, 1):.2f} CPU-s/subject"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), numba {numba.__version__} "
          f"({numba.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}")
    print(f"settings: kind={args.kind} seed={args.seed} surface_resolution={cfg.surface_resolution}")
    print(f"| {'step':<44} | {'seconds':>8} | notes")
    print(f"|{'-' * 46}|{'-' * 10}|------")
    for name, sec, note in rows:
        print(f"| {name:<44} | {sec:8.2f} | {note}")


if __name__ == "__main__":
    main()

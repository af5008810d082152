"""`perchead app` latency: one reconstruction of the bundled photo with the bundled demo checkpoint, measured
the way a person waits for it -- from the request to every output being ready.

    python benchmarks/bench_app.py [--runs 3] [--size 512] [--frames 60] [--threads N]

The app is started in this process on 127.0.0.1 (a free port) exactly as `perchead app` starts it, and a
gradio_client ``Client`` calls its "/reconstruct" endpoint over HTTP: upload of the photo, the queue, the
handler (preprocess, network, six views, turntable, files), and the download of every output file (viewer
.ply, views.png, turntable.mp4, the downloads list and the .ply) to the client. For comparison the handler is
also called directly (no HTTP, no gradio). "cold" is the first request after the start (MediaPipe and the
numba kernels' on-disk cache load then); "warm" is the median of ``--runs`` more. Target: <= 20 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_reconstruct import cpu_name  # same folder: run as python benchmarks/bench_app.py

TARGET_S = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="warm requests after the first (cold) one")
    parser.add_argument("--size", type=int, default=512, help="render size (the app's --size)")
    parser.add_argument("--frames", type=int, default=60, help="turntable frames (the app's --frames)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (the app's --threads)")
    parser.add_argument("--checkpoint", default="demo")
    args = parser.parse_args()

    import torch

    if args.threads is not None:
        from perchead.inference import set_threads

        set_threads(args.threads)

    from gradio_client import Client, handle_file

    from perchead.app import AppConfig, PercheadApp
    from perchead.app.handlers import EXAMPLE_PHOTO
    from perchead.app.ui import launch

    load_before = os.getloadavg()
    start = time.perf_counter()
    app = PercheadApp(AppConfig(checkpoint=args.checkpoint, size=args.size, frames=args.frames, device="cpu"))
    page, url = launch(app, host="127.0.0.1", port=None, block=False)
    startup = time.perf_counter() - start
    downloads = tempfile.mkdtemp(prefix="perchead-bench-app-")
    client = Client(url, verbose=False, analytics_enabled=False, download_files=downloads)

    def request() -> float:
        t = time.perf_counter()
        outputs = client.predict(handle_file(str(EXAMPLE_PHOTO)), api_name="/reconstruct")
        seconds = time.perf_counter() - t
        viewer, views, video, files, ply, message = outputs
        if not str(message).startswith("Reconstructed"):
            raise SystemExit(f"the app failed: {message}")
        for path in (viewer, views, video["video"] if isinstance(video, dict) else video, ply):
            if not Path(path).is_file():
                raise SystemExit(f"output {path} was not delivered")
        return seconds

    def handler() -> float:
        t = time.perf_counter()
        result = app.reconstruct(EXAMPLE_PHOTO)
        if not result.ok:
            raise SystemExit(f"the handler failed: {result.message}")
        return time.perf_counter() - t

    try:
        cold = request()
        warm = [request() for _ in range(args.runs)]
        direct = [handler() for _ in range(args.runs)]
    finally:
        page.close()
        app.close()
    load_after = os.getloadavg()

    cfg = app.rec.model.config
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), Python {platform.python_version()}, {sys.platform}")
    print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(f"settings: checkpoint {args.checkpoint} ({cfg.preset} preset, {cfg.num_gaussians:,} Gaussians), "
          f"render {args.size} px, turntable {args.frames} frames, SHP-CNN {'on' if app.rec.sharpens else 'off'}, "
          f"photo {EXAMPLE_PHOTO.name}; app start {startup:.1f} s")
    print()
    rows = [("HTTP request -> all outputs downloaded (gradio_client), cold", [cold]),
            (f"HTTP request -> all outputs downloaded (gradio_client), warm x{len(warm)}", warm),
            (f"handler call only (no HTTP), x{len(direct)}", direct)]
    print(f"| {'measurement':<66} | median s | min s | max s |")
    print(f"|{'-' * 68}|----------|-------|-------|")
    for name, values in rows:
        print(f"| {name:<66} | {statistics.median(values):8.2f} | {min(values):5.2f} | {max(values):5.2f} |")
    worst = max(cold, *warm)
    print()
    print(f"target: app latency <= {TARGET_S:.0f} s -> {'met' if worst <= TARGET_S else 'NOT met'} "
          f"(slowest request {worst:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The map fit of `perchead edit` (and the app's Edit tab): time per head, with and without its side term.

    python benchmarks/bench_edit_fit.py [--subjects 3] [--runs 2] [--threads N]

Held-out synthetic subjects (the demo data's generator settings, test split) are rendered from the front with
their exact maps; the bundled editing demo turns each map + its image (the style) into Gaussians, which are then
fitted to the map with :class:`perchead.edit.fit.MapFitConfig`'s defaults (60 steps at 128 px, 16,384
Gaussians, side coverage at weight 4) and with the side term off (``side_weight=0``). Prints one table: the
median over subjects x runs of each stage, with the machine and the settings.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from bench_reconstruct import cpu_name  # same folder: run as python benchmarks/bench_edit_fit.py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=3, help="held-out synthetic subjects")
    parser.add_argument("--runs", type=int, default=2, help="fits of each head per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--checkpoint", default="demo", help="editing checkpoint (default: the bundled demo)")
    args = parser.parse_args()

    import torch

    from perchead.data.synth import SynthConfig, make_subject, render_with_labels, subject_split
    from perchead.edit import load_edit_network
    from perchead.edit.fidelity import gaussian_labels
    from perchead.edit.fit import MapFitConfig, fit_to_map
    from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras

    if args.threads:
        torch.set_num_threads(args.threads)
    net = load_edit_network(args.checkpoint).eval()
    size = net.config.image_size
    anchors, s_max = net.template.points()[0], float(net.heads.s_max_m)
    synth = SynthConfig(size=size, heads="symmetric")
    indices = [i for i in range(1000) if subject_split(synth, i) == "test"][: args.subjects]
    cams = Cameras.orbit([0.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, size)
    settings = {"fit (default, side term on)": MapFitConfig(), "fit, side term off": MapFitConfig(side_weight=0.0)}
    times: dict[str, list[float]] = {"network": [], "labels": [], **{k: [] for k in settings}}
    gaussians = 0
    for index in indices:
        subject = make_subject(synth, index)
        r = render_with_labels(subject.gaussians, subject.labels, cams)
        image = r.rgb[0].permute(2, 0, 1) * r.alpha[0][None] + (1 - r.alpha[0][None])
        seg = r.segmentation[0].long()
        vm, K = cams.viewmats[0], cams.Ks[0]
        with torch.no_grad():
            t0 = time.perf_counter()
            g = net.generate(seg[None], net.style_from_image(image[None], r.alpha[0][None, None]))[0]
            times["network"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            labels = gaussian_labels(g, seg, vm, K)
            times["labels"].append(time.perf_counter() - t0)
        for name, cfg in settings.items():
            for _ in range(args.runs):
                fitted = fit_to_map(g, labels, seg, vm, K, cfg, anchors, s_max)
                times[name].append(fitted.seconds)
                gaussians = len(fitted.gaussians)

    cfg = MapFitConfig()
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"python {platform.python_version()}; checkpoint {args.checkpoint} ({size} px maps); "
          f"{len(indices)} held-out synthetic subjects x {args.runs} runs; fit: {cfg.steps} steps at {cfg.size} px, "
          f"{gaussians:,} Gaussians, side views {list(cfg.side_yaws)} at {cfg.side_size} px")
    print()
    print("| stage | median (s) | min (s) | max (s) |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rasterizer benchmark: forward and forward+backward time and peak memory, CPU backend vs pure PyTorch.

Scene: 65,536 Gaussians on the built-in head surface (one per point of the 256x256 template map), seen from
the front with the camera moved in until the head covers ~40% of the image. ``--ply head.ply`` adds a fitted
head (e.g. ``perchead reconstruct``'s output) seen like a turntable frame (1.5 m, 10 degrees up, 20 to the side);
its Gaussians overlap more than the template's discs. Each case runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own; the peak is reported above the
process' memory just before the first render (scene, camera and imports excluded; the first, warm-up render
included, which for the cpu backend reads the compiled kernels from numba's cache).

    python benchmarks/bench_render.py [--sizes 256 512] [--repeats 5] [--backends cpu torch-windowed]
                                      [--ply head.ply] [--profile] [--tile-size 16]

``--profile`` adds, per scene and size, the cpu backend's time per stage (best of ``--repeats`` each):
projection (SH colours and depth in PyTorch, the EWA projection in numba), binning and depth sorting, forward
compositing, backward compositing (numba), and the backward of the projection (numba, through PyTorch autograd).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_reconstruct import cpu_name  # same folder: run as python benchmarks/bench_render.py


def head_scene(n_side: int = 256) -> object:
    from perchead.geometry import Gaussians
    from perchead.geometry.head_surface import head_surface_map

    surf = head_surface_map(resolution=n_side)
    xyz, normals = surf.xyz.reshape(-1, 3), surf.normals.reshape(-1, 3)
    # Flat discs tangent to the surface, sized to the local point spacing so the surface is closed.
    spacing = torch.cdist(xyz[:: max(1, len(xyz) // 2048)], xyz).topk(2, largest=False).values[:, 1].median()
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    axis = torch.linalg.cross(z, normals, dim=-1)
    angle = torch.acos((normals * z).sum(-1).clamp(-1, 1))
    quats = torch.cat([torch.cos(angle / 2)[:, None],
                       torch.nn.functional.normalize(axis, dim=-1) * torch.sin(angle / 2)[:, None]], -1)
    scales = torch.stack([spacing.expand(len(xyz)), spacing.expand(len(xyz)), spacing.expand(len(xyz)) * 0.1], -1)
    rgb = 0.5 + 0.4 * torch.nn.functional.normalize(xyz, dim=-1)
    return Gaussians.from_activated(xyz, scales, quats, torch.full((len(xyz),), 0.9), rgb)


def camera(size: int, radius: float, pitch: float = 5.0):
    from perchead.geometry import HEAD_CAMERA_FOV_DEG, Cameras

    return Cameras.orbit([20.0], pitch, radius=radius, fov_deg=HEAD_CAMERA_FOV_DEG, size=size)


def load_scene(scene: str, radius: float, size: int):
    """(Gaussians, cameras) of a scene: "template" or the path of a head.ply."""
    if scene == "template":
        return head_scene(), camera(size, radius)
    from perchead.geometry import HEAD_CAMERA_RADIUS
    from perchead.io import load_gaussians

    return load_gaussians(scene), camera(size, HEAD_CAMERA_RADIUS, pitch=10.0)


def scene_label(scene: str) -> str:
    return "template" if scene == "template" else Path(scene).parent.name + "/" + Path(scene).name


def profile_case(scene_name: str, size: int, repeats: int, radius: float, tile_size: int) -> dict:
    """Best-of-``repeats`` time of each stage of the cpu backend's forward+backward, called one by one."""
    import numpy as np

    from perchead.geometry import camera_centers
    from perchead.render import cpu
    from perchead.render.project_cpu import project_cpu

    torch.set_num_threads(os.cpu_count() or 1)
    scene, cams = load_scene(scene_name, radius, size)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        getattr(scene, name).requires_grad_(True)
    vm, K = cams.viewmats, cams.Ks
    times: dict[str, list[float]] = {}
    for rep in range(repeats + 1):  # the first round warms up (numba's cache load) and is not counted
        stamps = [time.perf_counter()]
        colors = scene.colors(camera_centers(vm) if scene.sh_degree > 0 else None)
        colors = colors if colors.ndim == 3 else colors[None]
        cam_z = scene.means @ vm[0, 2, :3] + vm[0, 2, 3]
        features = torch.cat([colors[0], cam_z[:, None]], -1)[None]
        opac = scene.opacities
        proj = project_cpu(scene.means, scene.quats, scene.scales, vm, K, size, size)
        stamps.append(time.perf_counter())
        bins = cpu._TileBins(proj, opac, size, size, tile_size, np.float32)
        stamps.append(time.perf_counter())
        feat, alpha = cpu._CompositeCPU.apply(proj.means2d, proj.conics, features, opac, bins)
        stamps.append(time.perf_counter())
        loss = feat.square().mean() + alpha.mean()
        inputs = [proj.means2d, proj.conics, features, opac]
        grads = torch.autograd.grad(loss, inputs, retain_graph=True)
        stamps.append(time.perf_counter())
        torch.autograd.backward(inputs, grads)
        stamps.append(time.perf_counter())
        if rep:
            for stage, t0, t1 in zip(STAGES, stamps[:-1], stamps[1:], strict=True):
                times.setdefault(stage, []).append(t1 - t0)
        drawn = int(bins.offsets[-1])
    return {"scene": scene_label(scene_name), "size": size, "pairs": drawn,
            **{stage: min(v) for stage, v in times.items()}}


STAGES = ("projection", "binning+sorting", "forward compositing", "backward compositing", "projection backward")


def torch_windowed(gaussians, viewmats, Ks, width, height):
    """The pure-PyTorch alternative: each Gaussian evaluated in a fixed window around its centre, then
    per-pixel front-to-back compositing of the (Gaussian, pixel) pairs with segmented cumulative sums."""
    from perchead.render.project import ALPHA_MAX, ALPHA_MIN, SIGMA_CUTOFF, project

    proj = project(gaussians.means, gaussians.quats, gaussians.scales, viewmats[0], Ks[0], width, height)
    idx = torch.nonzero(proj.valid).squeeze(-1)
    idx = idx[torch.argsort(proj.depths.detach()[idx], stable=True)]
    m2d, con = proj.means2d[idx], proj.conics[idx]
    opac, rgb = gaussians.opacities[idx], gaussians.rgb[idx]
    radius = int(proj.extents[idx].max().clamp(max=16).ceil())
    offs = torch.arange(-radius, radius + 1)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    centre = m2d.detach().floor().long()
    px = centre[:, None, 0] + ox.reshape(1, -1)
    py = centre[:, None, 1] + oy.reshape(1, -1)
    dx, dy = px + 0.5 - m2d[:, None, 0], py + 0.5 - m2d[:, None, 1]
    sigma = 0.5 * (con[:, None, 0] * dx * dx + con[:, None, 2] * dy * dy) + con[:, None, 1] * dx * dy
    alpha = torch.clamp(opac[:, None] * torch.exp(-sigma), max=ALPHA_MAX)
    keep = (sigma >= 0) & (sigma <= SIGMA_CUTOFF) & (alpha >= ALPHA_MIN) & (px >= 0) & (px < width) & (py >= 0) \
        & (py < height)
    g_id, w_id = torch.nonzero(keep, as_tuple=True)  # g_id ascending = front to back
    pix = py[g_id, w_id] * width + px[g_id, w_id]
    a = alpha[g_id, w_id]
    order = torch.argsort(pix, stable=True)  # group by pixel, keep depth order inside each group
    pix, a, g_id = pix[order], a[order], g_id[order]
    log_t = torch.log1p(-a)
    csum = torch.cumsum(log_t, 0)
    starts = torch.ones_like(pix, dtype=torch.bool)
    starts[1:] = pix[1:] != pix[:-1]
    seg_start = torch.cummax(torch.where(starts, torch.arange(len(pix)), torch.zeros_like(pix)), 0).values
    before = csum - log_t - (csum[seg_start] - log_t[seg_start])  # exclusive sum within the pixel's segment
    w = a * torch.exp(before)
    color = torch.zeros(height * width, 3).index_add(0, pix, w[:, None] * rgb[g_id])
    acc = torch.zeros(height * width).index_add(0, pix, w)
    return color.reshape(height, width, 3) + (1 - acc.reshape(height, width, 1))


def run_case(backend: str, size: int, repeats: int, radius: float, scene_name: str, tile_size: int) -> dict:
    from perchead.render import rasterize

    torch.set_num_threads(os.cpu_count() or 1)
    scene, cams = load_scene(scene_name, radius, size)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        getattr(scene, name).requires_grad_(True)

    def render():
        if backend == "torch-windowed":
            return torch_windowed(scene, cams.viewmats, cams.Ks, size, size)
        return rasterize(scene, cams.viewmats, cams.Ks, size, size, backend=backend, tile_size=tile_size).rgb

    base_rss = _rss_mb()
    render().square().mean().backward()  # warm-up of both passes (and numba's kernel cache load)
    coverage = float((rasterize(scene.detach(), cams.viewmats, cams.Ks, size, size).alpha > 0.5).float().mean())
    fwd = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            render()
        fwd.append(time.perf_counter() - t0)
    both = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        render().square().mean().backward()
        both.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"backend": backend, "size": size, "fwd_s": min(fwd), "fwd_bwd_s": min(both), "peak_mb": peak,
            "coverage": coverage, "n": len(scene)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--backends", nargs="+", default=["cpu", "torch-windowed"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--radius", type=float, default=1.1, help="camera distance (m); 1.1 gives ~40%% cover")
    parser.add_argument("--ply", action="append", default=[], help="a head.ply to render as a further scene")
    parser.add_argument("--profile", action="store_true", help="add the cpu backend's time per stage")
    parser.add_argument("--tile-size", type=int, default=None, help="cpu backend tile side (default: its own)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from perchead.render.cpu import DEFAULT_TILE_SIZE

    tile = args.tile_size or DEFAULT_TILE_SIZE
    if args.case:
        kind, backend, size, scene = args.case.split(":", 3)
        if kind == "profile":
            print(json.dumps(profile_case(scene, int(size), args.repeats, args.radius, tile)))
        else:
            print(json.dumps(run_case(backend, int(size), args.repeats, args.radius, scene, tile)))
        return
    for ply in args.ply:
        if not Path(ply).is_file():
            parser.error(f"--ply {ply}: no such file")

    import numba

    # The policy perchead sets on import (see perchead/__init__.py); cases run in fresh processes with it.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    machine = (f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), numba {numba.__version__} "
               f"({numba.config.NUMBA_NUM_THREADS} threads), OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    print(machine)
    print(f"load average at start: {os.getloadavg()[0]:.1f}; cpu tile {tile}x{tile}; best of {args.repeats}")
    print("scenes: template = 65,536 Gaussians on the head template, camera at "
          f"{args.radius} m" + "".join(f"; {scene_label(p)} at 1.5 m" for p in args.ply))
    print()

    def case(kind: str, backend: str, size: int, scene: str) -> dict | str:
        out = subprocess.run([sys.executable, __file__, "--case", f"{kind}:{backend}:{size}:{scene}", "--repeats",
                              str(args.repeats), "--radius", str(args.radius), "--tile-size", str(tile)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
        return json.loads(out.stdout.strip().splitlines()[-1])

    scenes = ["template", *args.ply]
    print("| scene | backend | size | coverage | forward (s) | forward+backward (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for scene in scenes:
        for size in args.sizes:
            # torch-windowed's (Gaussian, pixel) pairs of a fitted head took 5 GB at 256 px: template only
            for backend in [b for b in args.backends if scene == "template" or b == "cpu"]:
                r = case("time", backend, size, scene)
                if isinstance(r, str):
                    print(f"| {scene_label(scene)} | {backend} | {size} | {r} ||||")
                    continue
                results[(scene, backend, size)] = r
                print(f"| {scene_label(scene)} ({r['n']:,}) | {backend} | {size} | {r['coverage']:.0%} | "
                      f"{r['fwd_s']:.3f} | {r['fwd_bwd_s']:.3f} | {r['peak_mb']:.0f} |")
    print()
    for (scene, backend, size), r in results.items():
        other = results.get((scene, "torch-windowed", size))
        if backend == "cpu" and other:
            print(f"speed-up of cpu over torch-windowed, {scene_label(scene)} at {size}px: forward "
                  f"{other['fwd_s'] / r['fwd_s']:.1f}x, forward+backward {other['fwd_bwd_s'] / r['fwd_bwd_s']:.1f}x")
    if args.profile:
        print(f"\ncpu backend per stage (s, best of {args.repeats}; pairs = (tile, Gaussian) list entries)\n")
        print("| scene | size | pairs | " + " | ".join(STAGES) + " | sum |")
        print("|---|---|---|" + "---|" * (len(STAGES) + 1))
        for scene in scenes:
            for size in args.sizes:
                r = case("profile", "cpu", size, scene)
                if isinstance(r, str):
                    print(f"| {scene_label(scene)} | {size} | {r} |")
                    continue
                print(f"| {r['scene']} | {size} | {r['pairs']:,} | " + " | ".join(f"{r[s]:.3f}" for s in STAGES)
                      + f" | {sum(r[s] for s in STAGES):.3f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} ({machine.split(',')[0]})")


if __name__ == "__main__":
    main()

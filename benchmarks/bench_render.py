"""Rasterizer benchmark: forward and forward+backward time and peak memory, CPU backend vs pure PyTorch.

Scene: 65,536 Gaussians on the built-in head surface (one per point of the 256x256 template map), seen from
the front with the camera moved in until the head covers ~40% of the image. Each case runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own; the peak is reported above the
process' memory just before the first render (scene, camera and imports excluded; the first, warm-up render
included, which for the cpu backend reads the compiled kernels from numba's cache).

    python benchmarks/bench_render.py [--sizes 256 512] [--repeats 5] [--backends cpu torch-windowed]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


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


def camera(size: int, radius: float):
    from perchead.geometry import HEAD_CAMERA_FOV_DEG, Cameras

    return Cameras.orbit([20.0], 5.0, radius=radius, fov_deg=HEAD_CAMERA_FOV_DEG, size=size)


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


def run_case(backend: str, size: int, repeats: int, radius: float) -> dict:
    from perchead.render import rasterize

    torch.set_num_threads(os.cpu_count() or 1)
    scene = head_scene()
    cams = camera(size, radius)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        getattr(scene, name).requires_grad_(True)

    def render():
        if backend == "torch-windowed":
            return torch_windowed(scene, cams.viewmats, cams.Ks, size, size)
        return rasterize(scene, cams.viewmats, cams.Ks, size, size, backend=backend).rgb

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
            "coverage": coverage}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--backends", nargs="+", default=["cpu", "torch-windowed"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--radius", type=float, default=1.1, help="camera distance (m); 1.1 gives ~40%% cover")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        backend, size = args.case.split(":")
        print(json.dumps(run_case(backend, int(size), args.repeats, args.radius)))
        return

    import numba

    # The policy perchead sets on import (see perchead/__init__.py); cases run in fresh processes with it.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), numba {numba.__version__} "
          f"({numba.config.NUMBA_NUM_THREADS} threads), load average {os.getloadavg()[0]:.1f} at start, "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    print(f"scene: 65,536 Gaussians on the head template, camera at {args.radius} m, best of {args.repeats}")
    print()
    print("| backend | size | coverage | forward (s) | forward+backward (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for size in args.sizes:
        for backend in args.backends:
            out = subprocess.run([sys.executable, __file__, "--case", f"{backend}:{size}", "--repeats",
                                  str(args.repeats), "--radius", str(args.radius)], capture_output=True, text=True,
                                 env=env)
            if out.returncode != 0:
                print(f"| {backend} | {size} | failed: {out.stderr.strip().splitlines()[-1]} |||")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[(backend, size)] = r
            print(f"| {backend} | {size} | {r['coverage']:.0%} | {r['fwd_s']:.3f} | {r['fwd_bwd_s']:.3f} | "
                  f"{r['peak_mb']:.0f} |")
    for size in args.sizes:
        if ("cpu", size) in results and ("torch-windowed", size) in results:
            speedup = results[("torch-windowed", size)]["fwd_bwd_s"] / results[("cpu", size)]["fwd_bwd_s"]
            print(f"\nforward+backward speed-up of cpu over torch-windowed at {size}px: {speedup:.1f}x", end="")
    print()


if __name__ == "__main__":
    main()

"""Tiled CPU compositor: numba kernels with a hand-written backward, in the design of gsplat's CUDA kernels.

Why numba: gsplat has no CPU path (its issue #635), pure-PyTorch windowed splatting was ~7x too slow to
train on, and numba compiles these loops to native, multi-threaded code at first use with no compiler or
build step at install time (the compiled kernels are cached on disk).

Pipeline for one camera:
1. *bin*: sort the valid Gaussians by depth (stable), then append each one to the list of every tile its
   3-sigma box touches, so every tile list is already front-to-back;
2. *forward*: per pixel, walk its tile's list and composite (the rule in :mod:`perchead.render.project`),
   keeping the final transmittance and how many list entries were consumed;
3. *backward*: per pixel, walk the same entries back to front, recovering each transmittance from the final
   one, and accumulate per-Gaussian gradients into per-thread buffers (no atomics, deterministic).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .project import ALPHA_MAX, ALPHA_MIN, SIGMA_CUTOFF, T_MIN, Projected


@njit(cache=True)
def _bin_tiles(means2d, extents, order, tile_size, tiles_x, tiles_y):
    """Per-tile lists of Gaussian ids in front-to-back order (CSR: offsets[t]..offsets[t+1])."""
    n = order.shape[0]
    n_tiles = tiles_x * tiles_y
    rects = np.empty((n, 4), np.int64)
    counts = np.zeros(n_tiles + 1, np.int64)
    for k in range(n):
        g = order[k]
        # Pixel u has its centre at u + 0.5; one extra pixel of margin absorbs float rounding at the rim.
        x0 = max(int(math.floor((means2d[g, 0] - extents[g, 0] - 1.5) / tile_size)), 0)
        x1 = min(int(math.floor((means2d[g, 0] + extents[g, 0] + 0.5) / tile_size)), tiles_x - 1)
        y0 = max(int(math.floor((means2d[g, 1] - extents[g, 1] - 1.5) / tile_size)), 0)
        y1 = min(int(math.floor((means2d[g, 1] + extents[g, 1] + 0.5) / tile_size)), tiles_y - 1)
        rects[k, 0], rects[k, 1], rects[k, 2], rects[k, 3] = x0, x1, y0, y1
        for ty in range(y0, y1 + 1):
            for tx in range(x0, x1 + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    ids = np.empty(offsets[-1], np.int32)
    fill = offsets[:-1].copy()
    for k in range(n):
        for ty in range(rects[k, 2], rects[k, 3] + 1):
            for tx in range(rects[k, 0], rects[k, 1] + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = order[k]
                fill[t] += 1
    return offsets, ids


@njit(parallel=True, cache=True)
def _forward(means2d, conics, feats, opac, offsets, ids, width, height, tile_size, tiles_x, n_threads,
             out_feat, out_t, out_n):
    n_tiles = offsets.shape[0] - 1
    n_feat = feats.shape[1]
    # Tiles are dealt round-robin to threads: a head sits mid-image, so contiguous halves would be unbalanced.
    for th in prange(n_threads):
        for t in range(th, n_tiles, n_threads):
            start, end = offsets[t], offsets[t + 1]
            if start == end:
                continue
            tx0 = (t % tiles_x) * tile_size
            ty0 = (t // tiles_x) * tile_size
            for py in range(ty0, min(ty0 + tile_size, height)):
                for px in range(tx0, min(tx0 + tile_size, width)):
                    cx, cy = px + 0.5, py + 0.5
                    trans = 1.0
                    k = start
                    while k < end:
                        g = ids[k]
                        dx = cx - means2d[g, 0]
                        dy = cy - means2d[g, 1]
                        sigma = 0.5 * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy
                        if sigma >= 0.0 and sigma <= SIGMA_CUTOFF:
                            alpha = min(ALPHA_MAX, opac[g] * math.exp(-sigma))
                            if alpha >= ALPHA_MIN:
                                next_t = trans * (1.0 - alpha)
                                if next_t <= T_MIN:
                                    break
                                w = alpha * trans
                                for f in range(n_feat):
                                    out_feat[py, px, f] += w * feats[g, f]
                                trans = next_t
                        k += 1
                    out_t[py, px] = trans
                    out_n[py, px] = k - start


@njit(parallel=True, cache=True)
def _backward(means2d, conics, feats, opac, offsets, ids, width, height, tile_size, tiles_x, n_threads,
              out_t, out_n, grad_feat, grad_alpha):
    n = opac.shape[0]
    n_feat = feats.shape[1]
    n_tiles = offsets.shape[0] - 1
    # Per-thread gradient buffers, summed at the end: no atomics, and the result is deterministic.
    g_means = np.zeros((n_threads, n, 2), means2d.dtype)
    g_conics = np.zeros((n_threads, n, 3), means2d.dtype)
    g_feats = np.zeros((n_threads, n, n_feat), means2d.dtype)
    g_opac = np.zeros((n_threads, n), means2d.dtype)
    for th in prange(n_threads):
        acc = np.empty(n_feat, means2d.dtype)
        for t in range(th, n_tiles, n_threads):
            start = offsets[t]
            tx0 = (t % tiles_x) * tile_size
            ty0 = (t // tiles_x) * tile_size
            for py in range(ty0, min(ty0 + tile_size, height)):
                for px in range(tx0, min(tx0 + tile_size, width)):
                    count = out_n[py, px]
                    if count == 0:
                        continue
                    cx, cy = px + 0.5, py + 0.5
                    t_final = out_t[py, px]
                    trans = t_final
                    ga = grad_alpha[py, px]
                    for f in range(n_feat):
                        acc[f] = 0.0
                    for k in range(start + count - 1, start - 1, -1):
                        g = ids[k]
                        dx = cx - means2d[g, 0]
                        dy = cy - means2d[g, 1]
                        a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
                        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                        if sigma < 0.0 or sigma > SIGMA_CUTOFF:
                            continue
                        gauss = math.exp(-sigma)
                        raw = opac[g] * gauss
                        alpha = min(ALPHA_MAX, raw)
                        if alpha < ALPHA_MIN:
                            continue
                        one_minus = 1.0 - alpha
                        trans = trans / one_minus  # transmittance in front of this Gaussian
                        w = alpha * trans
                        d_alpha = ga * t_final / one_minus
                        for f in range(n_feat):
                            gf = grad_feat[py, px, f]
                            g_feats[th, g, f] += w * gf
                            d_alpha += gf * (feats[g, f] * trans - acc[f] / one_minus)
                            acc[f] += feats[g, f] * w
                        if raw < ALPHA_MAX:  # the clamp at 0.99 has zero gradient
                            g_opac[th, g] += d_alpha * gauss
                            d_sigma = -d_alpha * alpha
                            g_conics[th, g, 0] += 0.5 * d_sigma * dx * dx
                            g_conics[th, g, 1] += d_sigma * dx * dy
                            g_conics[th, g, 2] += 0.5 * d_sigma * dy * dy
                            # d = pixel - mean, so d(sigma)/d(mean) = -conic @ d
                            g_means[th, g, 0] -= d_sigma * (a * dx + b * dy)
                            g_means[th, g, 1] -= d_sigma * (b * dx + c * dy)
    return g_means.sum(axis=0), g_conics.sum(axis=0), g_feats.sum(axis=0), g_opac.sum(axis=0)


class _TileBins:
    """The binning of one camera: shared by the forward and the backward pass."""

    def __init__(self, proj: Projected, opacities: Tensor, width: int, height: int, tile_size: int,
                 dtype: np.dtype):
        self.width, self.height, self.tile_size = width, height, tile_size
        self.tiles_x = (width + tile_size - 1) // tile_size
        self.tiles_y = (height + tile_size - 1) // tile_size
        # A pixel counts iff opacity * exp(-sigma) >= ALPHA_MIN and sigma <= SIGMA_CUTOFF, i.e. sigma <=
        # min(SIGMA_CUTOFF, ln(opacity / ALPHA_MIN)): a faint Gaussian reaches less far than 3 sigma (gsplat's
        # opacity-aware radius), and one below ALPHA_MIN nowhere. Binning to that smaller box skips only
        # pixels the kernels would skip anyway, so images and gradients are unchanged; fitted heads, whose
        # densified children are faint, render faster.
        opac = opacities.detach().cpu().double().numpy()
        reach = np.minimum(SIGMA_CUTOFF, np.log(np.maximum(opac, 1e-30) / ALPHA_MIN))
        valid = proj.valid.detach().cpu().numpy() & (reach >= 0.0)
        depths = proj.depths.detach().cpu().numpy()
        idx = np.flatnonzero(valid)
        order = idx[np.argsort(depths[idx], kind="stable")].astype(np.int64)
        means2d = np.ascontiguousarray(proj.means2d.detach().cpu().numpy(), dtype=dtype)
        # (1 + 1e-4): float rounding of the ratio must not cut a rim pixel; the box keeps its 1-px margin too
        shrink = np.sqrt(np.clip(reach, 0.0, None) / SIGMA_CUTOFF) * (1.0 + 1e-4)
        extents = np.ascontiguousarray(proj.extents.detach().cpu().double().numpy() * shrink[:, None], dtype=dtype)
        self.offsets, self.ids = _bin_tiles(means2d, extents, order, tile_size, self.tiles_x, self.tiles_y)


def _np(t: Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, features, opacities, bins: _TileBins):
        dtype = np.float64 if means2d.dtype == torch.float64 else np.float32
        arrays = (_np(means2d, dtype), _np(conics, dtype), _np(features, dtype), _np(opacities, dtype))
        h, w = bins.height, bins.width
        out_feat = np.zeros((h, w, features.shape[1]), dtype)
        out_t = np.ones((h, w), dtype)
        out_n = np.zeros((h, w), np.int32)
        n_threads = numba.get_num_threads()
        _forward(*arrays, bins.offsets, bins.ids, w, h, bins.tile_size, bins.tiles_x, n_threads,
                 out_feat, out_t, out_n)
        ctx.arrays, ctx.bins, ctx.out_t, ctx.out_n = arrays, bins, out_t, out_n
        ctx.device = means2d.device
        feat = torch.from_numpy(out_feat).to(means2d.device)
        alpha = torch.from_numpy(1.0 - out_t).to(means2d.device)
        return feat, alpha

    @staticmethod
    def backward(ctx, grad_feat, grad_alpha):
        bins = ctx.bins
        dtype = ctx.arrays[0].dtype
        grads = _backward(*ctx.arrays, bins.offsets, bins.ids, bins.width, bins.height, bins.tile_size,
                          bins.tiles_x, numba.get_num_threads(), ctx.out_t, ctx.out_n,
                          _np(grad_feat, dtype), _np(grad_alpha, dtype))
        g_means, g_conics, g_feats, g_opac = (torch.from_numpy(g).to(ctx.device) for g in grads)
        return g_means, g_conics, g_feats, g_opac, None


def composite_cpu(proj: Projected, features: Tensor, opacities: Tensor, width: int, height: int,
                  tile_size: int = 8) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`perchead.render.reference.composite_reference`, fast."""
    dtype = np.float64 if proj.means2d.dtype == torch.float64 else np.float32
    bins = _TileBins(proj, opacities, width, height, tile_size, dtype)
    return _CompositeCPU.apply(proj.means2d, proj.conics, features, opacities, bins)

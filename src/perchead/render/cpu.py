"""Tiled CPU compositor: numba kernels with a hand-written backward, in the design of gsplat's CUDA kernels.

Why numba: gsplat has no CPU path (its issue #635), pure-PyTorch windowed splatting was ~7x too slow to
train on, and numba compiles these loops to native, multi-threaded code at first use with no compiler or
build step at install time (the compiled kernels are cached on disk).

Pipeline for C cameras at once:
1. *bin*: per camera, sort the valid Gaussians by depth (stable), then append each one to the list of every
   tile its ellipse reaches, so every tile list is already front-to-back;
2. *forward*: per tile, walk its list once and composite each Gaussian into all the tile's pixels at a time
   (the pixel loop is what the compiler vectorises: the tile's per-pixel state lives in small
   structure-of-arrays buffers), keeping each pixel's final transmittance and how many list entries it
   consumed; a tile stops as soon as all of its pixels are saturated;
3. *backward*: per tile, walk the same entries back to front, recovering each pixel's transmittance from the
   final one, sum each Gaussian's gradient over the tile's pixels and add it to a per-thread buffer (no
   atomics, deterministic).

Threads take (camera, tile) pairs, the costliest tiles first, so several views of one call share the cores.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .project import ALPHA_MAX, ALPHA_MIN, SIGMA_CUTOFF, T_MIN, Projected

# Tile side in pixels, measured with benchmarks/bench_render.py (docs/render.md): 8 beats 16 because the
# heads' Gaussians are small, so a 16x16 tile spends most of each Gaussian's pixel loop outside its ellipse.
DEFAULT_TILE_SIZE = 8

# Reassociation lets the per-tile gradient sums vectorise and contraction allows FMAs; no "nnan"/"ninf":
# masked-out lanes may hold inf, and the comparisons that mask them must stay exact.
_FAST = {"reassoc", "contract", "nsz", "arcp"}
# The pixel loops are written for AVX2 as much as for AVX-512. Each writes every element unconditionally and
# selects with 0 / 1 factors (exact: x * 1 = x, x * 0 = 0, used + (rank - used) * 0 = used), because a
# conditional assignment (x[p] = v if c else x[p], or x[p] = max(x[p], v)) compiles to masked stores, which
# AVX-512 does in one instruction but AMD's AVX2 cores microcode; and their counters and indices are 32-bit floats
# and ints, because one int64 lane (numba's default integer, and the type of int32 * int32) halves the vector
# width on AVX2. Both kernels ran 2.3-3.3x faster on an AMD EPYC Zen 3 with the same images and gradients
# (docs/render.md, "On an AVX2-only CPU").

# Per-Gaussian screen-space parameters, packed into one row so that a tile reads one cache line per entry.
_MX, _MY, _CA, _CB, _CC, _OP = range(6)
_PACK = 8
# Per-row binning terms: the shrunk box's half-widths, then _row_reach's ellipse terms.
_EX, _EY, _RY, _RAK, _RDET, _RLM = range(6)
_N_EXTENTS = 6


# The kernels' constants, passed as an array of the kernels' dtype: numba types a Python float literal as
# float64, and one float64 operand turns a float32 loop into a mixed-precision one that does not vectorise.
_CONSTS = (0.0, 0.5, 1.0, SIGMA_CUTOFF, ALPHA_MAX, ALPHA_MIN, T_MIN,
           -1.0 / 16.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 1.0 / 2.0)


@njit(inline="always", fastmath=_FAST, cache=True)
def _exp_neg(s, k):
    """exp(-s) for s in [0, SIGMA_CUTOFF]: exp(-s/16)^16 with a degree-7 Taylor polynomial, which vectorises
    (numba's math.exp is a scalar libm call without Intel's SVML). Relative error < 2e-6 in float32 (a few
    ulp), ~1e-9 in float64."""
    t = s * k[7]
    one = k[2]
    e = one + t * (one + t * (k[13] + t * (k[12] + t * (k[11] + t * (k[10] + t * (k[9] + t * k[8]))))))
    e = e * e
    e = e * e
    e = e * e
    return e * e


@njit(parallel=True, cache=True)
def _bin_tiles(packed, extents, order, order_cam, n_cams, tile_size, tiles_x, tiles_y, n_chunks):
    """Per-(camera, tile) lists of Gaussian rows in front-to-back order (CSR: offsets[t]..offsets[t+1]).

    ``order`` holds each camera's valid rows of ``packed`` (row = camera * N + Gaussian), depth-sorted, camera
    after camera; ``order_cam[k]`` is the camera of entry k. Tile t of camera c is c * n_tiles + t. Each row of
    a Gaussian's box of tiles is cut to the columns its ellipse reaches (:func:`_row_reach`): a *span*.

    Two counting sorts, so that no pass writes all over the lists: ``order`` is cut into ``n_chunks`` contiguous
    runs, one per thread, and each run writes its spans (row, first and last column) into the spans of their row
    of tiles, after those of the runs before it, so each row of tiles holds its spans in depth order; then each
    row of tiles, one per thread, counts its tiles' entries and writes its spans into its own tiles' lists, a
    part of ``ids`` small enough to stay in cache. Writing each entry straight from the depth-ordered runs into
    its tile's list instead (one sort) was 1.4-1.6x slower: every write then lands on a different cache line
    (docs/render.md).
    """
    n = order.shape[0]
    n_rows = n_cams * tiles_y
    rects = np.empty((n, 4), np.int32)
    span_pos = np.zeros((n_chunks, n_rows), np.int64)
    for ch in prange(n_chunks):
        for k in range(n * ch // n_chunks, n * (ch + 1) // n_chunks):
            g = order[k]
            mx, my = packed[g, _MX], packed[g, _MY]
            # Pixel u has its centre at u + 0.5; one extra pixel of margin absorbs float rounding at the rim.
            x0 = max(int(math.floor((mx - extents[g, _EX] - 1.5) / tile_size)), 0)
            x1 = min(int(math.floor((mx + extents[g, _EX] + 0.5) / tile_size)), tiles_x - 1)
            y0 = max(int(math.floor((my - extents[g, _EY] - 1.5) / tile_size)), 0)
            y1 = min(int(math.floor((my + extents[g, _EY] + 0.5) / tile_size)), tiles_y - 1)
            rects[k, 0], rects[k, 1], rects[k, 2], rects[k, 3] = x0, x1, y0, y1
            if x1 >= x0:
                first = order_cam[k] * tiles_y
                for ty in range(y0, y1 + 1):
                    span_pos[ch, first + ty] += 1
    # where each run's spans start in each row of tiles (span_pos becomes the runs' fill pointers)
    span_start = np.empty(n_rows + 1, np.int64)
    pos = 0
    for r in range(n_rows):
        span_start[r] = pos
        for ch in range(n_chunks):
            c = span_pos[ch, r]
            span_pos[ch, r] = pos
            pos += c
    span_start[n_rows] = pos
    spans = np.empty((pos, 3), np.int32)  # row of packed, first and last column of tiles (none if last < first)
    for ch in prange(n_chunks):
        for k in range(n * ch // n_chunks, n * (ch + 1) // n_chunks):
            g = order[k]
            x0, x1, y0, y1 = rects[k, 0], rects[k, 1], rects[k, 2], rects[k, 3]
            if x1 < x0:
                continue
            first = order_cam[k] * tiles_y
            single = x0 == x1 and y0 == y1  # a one-tile box needs no test
            for ty in range(y0, y1 + 1):
                lo, hi = (x0, x1) if single else _row_reach(packed, extents, g, ty, tile_size, x0, x1)
                m = span_pos[ch, first + ty]
                spans[m, 0], spans[m, 1], spans[m, 2] = g, lo, hi
                span_pos[ch, first + ty] = m + 1
    # each tile's list length from its row's spans (a difference array per row), then the lists' offsets
    lengths = np.zeros(n_rows * tiles_x + 1, np.int64)
    for r in prange(n_rows):
        diff = np.zeros(tiles_x + 1, np.int64)
        for i in range(span_start[r], span_start[r + 1]):
            lo, hi = spans[i, 1], spans[i, 2]
            if hi >= lo:
                diff[lo] += 1
                diff[hi + 1] -= 1
        run = 0
        for tx in range(tiles_x):
            run += diff[tx]
            lengths[r * tiles_x + tx + 1] = run
    offsets = np.cumsum(lengths)
    ids = np.empty(offsets[-1], np.int32)
    for r in prange(n_rows):
        fill = offsets[r * tiles_x:(r + 1) * tiles_x].copy()
        for i in range(span_start[r], span_start[r + 1]):
            g = spans[i, 0]
            for tx in range(spans[i, 1], spans[i, 2] + 1):
                ids[fill[tx]] = g
                fill[tx] += 1
    return offsets, ids


@njit(parallel=True, cache=True)
def _pack_rows(means2d, conics, opacities, box, valid, packed, extents, keep):
    """Fill ``packed`` (mean, conic, opacity per (camera, Gaussian) row) and ``extents`` (the 3-sigma box's
    half-widths shrunk to the opacity's reach, and the ellipse terms of :func:`_row_reach`); ``keep``: valid
    and reaching a pixel."""
    n = opacities.shape[0]
    for r in prange(packed.shape[0]):
        opac = opacities[r % n]
        reach = min(SIGMA_CUTOFF, math.log(max(opac, 1e-30) / ALPHA_MIN))
        keep[r] = valid[r] and reach >= 0.0
        # (1 + 1e-4): float rounding of the ratio must not cut a rim pixel; the box keeps its 1-px margin too
        shrink = math.sqrt(max(reach, 0.0) / SIGMA_CUTOFF) * (1.0 + 1e-4)
        packed[r, _MX], packed[r, _MY] = means2d[r, 0], means2d[r, 1]
        packed[r, _CA], packed[r, _CB], packed[r, _CC] = conics[r, 0], conics[r, 1], conics[r, 2]
        packed[r, _OP] = opac
        packed[r, 6] = packed[r, 7] = 0.0
        extents[r, _EX], extents[r, _EY] = box[r, 0] * shrink, box[r, 1] * shrink
        # The shrunk ellipse a dx^2 + 2 b dx dy + c dy^2 <= k, for _row_reach: its half-height, a k, the
        # determinant and the y of its leftmost point, computed once instead of once per row of tiles.
        a, b, c = np.float64(conics[r, 0]), np.float64(conics[r, 1]), np.float64(conics[r, 2])
        k = 2.0 * SIGMA_CUTOFF * shrink * shrink * 1.0001
        det = a * c - b * b
        if det <= 0.0 or a <= 0.0:
            extents[r, _RY] = -1.0
        else:
            extents[r, _RY] = math.sqrt(k * a / det)
            extents[r, _RLM] = b * math.sqrt(k * c / det) / c
        extents[r, _RAK], extents[r, _RDET] = a * k, det


@njit(parallel=True, cache=True)
def _depth_order(keys, keep, n_cams):
    """Each camera's kept rows (row = camera * N + Gaussian) in stable ascending order of ``keys`` (the depths'
    bits as unsigned integers), camera after camera, and the camera of each entry.

    A least-significant-byte-first radix sort: stable by construction, linear, and a pass whose byte is the same
    for every key (the exponent's, for a head's narrow range of depths) is skipped. Cameras run in parallel.
    """
    n = keys.shape[0] // n_cams
    n_bytes = keys.itemsize
    counts = np.zeros(n_cams + 1, np.int64)
    for c in prange(n_cams):
        counts[c + 1] = keep[c * n:(c + 1) * n].sum()
    starts = np.cumsum(counts)
    order = np.empty(starts[-1], np.int64)
    order_cam = np.empty(starts[-1], np.int64)
    for c in prange(n_cams):
        m = starts[c + 1] - starts[c]
        src = np.empty(m, np.int64)
        dst = np.empty(m, np.int64)
        k_src = np.empty(m, np.uint64)
        k_dst = np.empty(m, np.uint64)
        hist = np.zeros((n_bytes, 257), np.int64)
        i = 0
        for r in range(c * n, (c + 1) * n):
            if keep[r]:
                key = np.uint64(keys[r])
                src[i], k_src[i] = r, key
                for b in range(n_bytes):
                    hist[b, np.int64((key >> np.uint64(8 * b)) & np.uint64(255)) + 1] += 1
                i += 1
        for b in range(n_bytes):
            if hist[b].max() == m:
                continue  # every key has the same byte here: the pass would not move anything
            pos = np.cumsum(hist[b, :256])
            for i in range(m):
                d = np.int64((k_src[i] >> np.uint64(8 * b)) & np.uint64(255))
                dst[pos[d]], k_dst[pos[d]] = src[i], k_src[i]
                pos[d] += 1
            src, dst = dst, src
            k_src, k_dst = k_dst, k_src
        order[starts[c]:starts[c + 1]] = src
        order_cam[starts[c]:starts[c + 1]] = c
    return order, order_cam


@njit(inline="always", cache=True)
def _row_reach(packed, extents, g, ty, tile_size, x0, x1):
    """The tiles [lo, hi] of tile row ty (within the box's columns x0..x1) that row g's ellipse reaches.

    The ellipse 0.5 d^T conic d <= cut (the cut-off shrunk for opacity, as the extents are) is sliced by the
    row's band of pixel centres widened by a pixel (a conservative test; exactness stays with the kernels' own
    rule), and that slice's x-range gives the tiles: one square root per row of tiles, not a test per tile.
    The slice's left edge is convex in y and its right edge concave, so their extremes over the band lie at the
    ellipse's leftmost / rightmost points when the band holds them, else at the band's nearer end.
    """
    ey = extents[g, _RY]
    if ey < 0.0:
        return x0, x1  # not an ellipse (cannot happen for a valid Gaussian): keep the whole box
    mx, my = packed[g, _MX], packed[g, _MY]
    ly = max(ty * tile_size - 0.5 - my, -ey)
    hy = min(ty * tile_size + tile_size + 0.5 - my, ey)
    if ly > hy:
        return 1, 0  # the band misses the ellipse
    a, b = packed[g, _CA], packed[g, _CB]
    ak, det, y_lm = extents[g, _RAK], extents[g, _RDET], extents[g, _RLM]
    y_left = min(max(y_lm, ly), hy)  # the leftmost point is (-ex, b ex / c)
    y_right = min(max(-y_lm, ly), hy)  # the rightmost (ex, -b ex / c)
    xl = (-b * y_left - math.sqrt(max(ak - det * y_left * y_left, 0.0))) / a
    xr = (-b * y_right + math.sqrt(max(ak - det * y_right * y_right, 0.0))) / a
    # tile tx's widened pixel centres span [tx * ts - 0.5, tx * ts + ts + 0.5]
    lo = max(int(math.ceil((mx + xl - 0.5) / tile_size)) - 1, x0)
    hi = min(int(math.floor((mx + xr + 0.5) / tile_size)), x1)
    return lo, hi


@njit(inline="always", cache=True)
def _tile_pixels(tile, tiles_x, height, tile_size, pxs, pys):
    """Camera and top-left pixel of (camera, tile) number ``tile``; fills its pixel centres (row-major)."""
    n_tiles_cam = tiles_x * ((height + tile_size - 1) // tile_size)
    cam, t = tile // n_tiles_cam, tile % n_tiles_cam
    tx0, ty0 = (t % tiles_x) * tile_size, (t // tiles_x) * tile_size
    for p in range(tile_size * tile_size):
        pxs[p], pys[p] = tx0 + p % tile_size + 0.5, ty0 + p // tile_size + 0.5
    return cam, tx0, ty0


@njit(parallel=True, fastmath=_FAST, cache=True)
def _forward(packed, k, offsets, ids, tile_order, width, height, tile_size, tiles_x, feats, n_threads,
             out_feat, out_t, out_n, drew):
    zero, half, one, cut, amax, amin, tmin = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    n_feat = feats.shape[1]
    n_pix = tile_size * tile_size
    dtype = packed.dtype
    for th in prange(n_threads):
        pxs = np.empty(n_pix, dtype)
        pys = np.empty(n_pix, dtype)
        trans = np.empty(n_pix, dtype)
        weight = np.empty(n_pix, dtype)
        live = np.empty(n_pix, dtype)  # 1 or 0, a float mask (see _FAST)
        used = np.empty(n_pix, dtype)  # a count in the float type (see _FAST), exact below 2^24 entries a tile
        acc = np.empty((n_feat, n_pix), dtype)
        for i in range(th, tile_order.shape[0], n_threads):
            tile = tile_order[i]
            start, end = offsets[tile], offsets[tile + 1]
            cam, tx0, ty0 = _tile_pixels(tile, tiles_x, height, tile_size, pxs, pys)
            n_live = 0
            for p in range(n_pix):
                px, py = tx0 + p % tile_size, ty0 + p // tile_size
                inside = px < width and py < height  # pixels past the image edge are never drawn
                live[p] = one if inside else zero
                n_live += inside
                trans[p] = one
                used[p] = zero
            acc[:] = zero
            rank = zero
            for j in range(start, end):
                g = ids[j]
                mx, my, a, b, c = packed[g, _MX], packed[g, _MY], packed[g, _CA], packed[g, _CB], packed[g, _CC]
                opac = packed[g, _OP]
                n_draw = zero  # 32-bit lanes only, and no conditional store: see _FAST
                n_stop = zero
                rank += one
                for p in range(n_pix):
                    dx = pxs[p] - mx
                    dy = pys[p] - my
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    alpha = min(amax, opac * _exp_neg(min(max(sigma, zero), cut), k))
                    t_old = trans[p]
                    hit = (live[p] > zero) & (sigma >= zero) & (sigma <= cut) & (alpha >= amin)
                    stop = hit & (t_old * (one - alpha) <= tmin)
                    stop_f = one if stop else zero
                    draw_f = (one if hit else zero) - stop_f
                    a_draw = alpha * draw_f
                    weight[p] = a_draw * t_old
                    trans[p] = t_old * (one - a_draw)
                    # entries the backward must walk back over: rank where drawn (never below used), as
                    # arithmetic because LLVM turns max() into a masked store
                    used[p] = used[p] + (rank - used[p]) * draw_f
                    live[p] = live[p] - stop_f
                    n_draw += draw_f
                    n_stop += stop_f
                drew[j] = n_draw > zero  # the backward skips entries that drew nothing
                if n_draw > zero:
                    for f in range(n_feat):
                        v = feats[g, f]
                        for p in range(n_pix):
                            acc[f, p] += weight[p] * v
                n_live -= int(n_stop)
                if n_live == 0:
                    break  # every pixel of the tile is saturated
            for p in range(n_pix):
                px, py = tx0 + p % tile_size, ty0 + p // tile_size
                if px < width and py < height:
                    for f in range(n_feat):
                        out_feat[cam, py, px, f] = acc[f, p]
                    out_t[cam, py, px] = trans[p]
                    out_n[cam, py, px] = np.int32(used[p])


@njit(parallel=True, fastmath=_FAST, cache=True)
def _backward(packed, k, offsets, ids, tile_order, width, height, tile_size, tiles_x, feats, n_threads,
              out_t, out_n, drew, grad_feat, grad_alpha):
    zero, half, one, cut, amax, amin = k[0], k[1], k[2], k[3], k[4], k[5]
    n_rows = packed.shape[0]
    n_feat = feats.shape[1]
    n_pix = tile_size * tile_size
    dtype = packed.dtype
    # Per-thread gradient buffers, summed at the end: no atomics, and the result is deterministic.
    g_params = np.zeros((n_threads, n_rows, 6), dtype)  # d/d(mean x, mean y, conic a, b, c, opacity)
    g_feats = np.zeros((n_threads, n_rows, n_feat), dtype)
    for th in prange(n_threads):
        pxs = np.empty(n_pix, dtype)
        pys = np.empty(n_pix, dtype)
        trans = np.empty(n_pix, dtype)
        ga_t = np.empty(n_pix, dtype)
        used = np.zeros(n_pix, np.int32)
        gf = np.zeros((n_feat, n_pix), dtype)
        acc = np.empty((n_feat, n_pix), dtype)
        weight = np.empty(n_pix, dtype)
        inv_1m = np.empty(n_pix, dtype)
        d_alpha = np.empty(n_pix, dtype)
        gauss_live = np.empty(n_pix, dtype)
        has_grad = np.empty(n_feat, np.bool_)
        for i in range(th, tile_order.shape[0], n_threads):
            tile = tile_order[i]
            start = offsets[tile]
            cam, tx0, ty0 = _tile_pixels(tile, tiles_x, height, tile_size, pxs, pys)
            n_max = 0
            has_grad[:] = False
            for p in range(n_pix):
                px, py = tx0 + p % tile_size, ty0 + p // tile_size
                if px < width and py < height:
                    trans[p] = out_t[cam, py, px]
                    ga_t[p] = grad_alpha[cam, py, px] * trans[p]
                    used[p] = out_n[cam, py, px]
                    for f in range(n_feat):
                        gf[f, p] = grad_feat[cam, py, px, f]
                        has_grad[f] = has_grad[f] or gf[f, p] != zero
                else:
                    trans[p], ga_t[p], used[p] = one, zero, 0
                n_max = max(n_max, used[p])
            acc[:] = zero
            for j in range(n_max - 1, -1, -1):
                if not drew[start + j]:
                    continue  # reached the tile's box but none of its pixels: no gradient
                g = ids[start + j]
                mx, my, a, b, c = packed[g, _MX], packed[g, _MY], packed[g, _CA], packed[g, _CB], packed[g, _CC]
                opac = packed[g, _OP]
                n_hit = zero  # 32-bit lanes only, and no conditional store: see _FAST
                jj = np.int32(j)
                for p in range(n_pix):
                    dx = pxs[p] - mx
                    dy = pys[p] - my
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    gauss = _exp_neg(min(max(sigma, zero), cut), k)
                    raw = opac * gauss
                    alpha = min(amax, raw)
                    hit = (jj < used[p]) & (sigma >= zero) & (sigma <= cut) & (alpha >= amin)
                    hit_f = one if hit else zero
                    inv = one / (one - alpha)
                    t_front = trans[p] * max(one, inv * hit_f)  # transmittance in front of this Gaussian
                    trans[p] = t_front
                    weight[p] = alpha * hit_f * t_front
                    inv_1m[p] = inv * hit_f
                    d_alpha[p] = ga_t[p] * inv * hit_f
                    # the clamp at 0.99 has zero gradient, and so has every pixel this Gaussian did not reach
                    unclamped = one if raw < amax else zero
                    gauss_live[p] = gauss * hit_f * unclamped
                    n_hit += hit_f
                if n_hit == zero:
                    continue
                for f in range(n_feat):
                    if not has_grad[f]:
                        continue  # a channel no loss reads here (depth, mostly) adds nothing to any gradient
                    v = feats[g, f]
                    g_f = zero
                    for p in range(n_pix):
                        w = weight[p]
                        g_f += w * gf[f, p]
                        d_alpha[p] += gf[f, p] * (v * trans[p] - acc[f, p] * inv_1m[p])  # masked below
                        acc[f, p] += v * w
                    g_feats[th, g, f] += g_f
                g_mx, g_my, g_a, g_b, g_c, g_o = zero, zero, zero, zero, zero, zero
                for p in range(n_pix):
                    dx = pxs[p] - mx
                    dy = pys[p] - my
                    da = d_alpha[p] * gauss_live[p]
                    g_o += da
                    d_sigma = -da * opac
                    g_a += half * d_sigma * dx * dx
                    g_b += d_sigma * dx * dy
                    g_c += half * d_sigma * dy * dy
                    # d = pixel - mean, so d(sigma)/d(mean) = -conic @ d
                    g_mx -= d_sigma * (a * dx + b * dy)
                    g_my -= d_sigma * (b * dx + c * dy)
                g_params[th, g, 0] += g_mx
                g_params[th, g, 1] += g_my
                g_params[th, g, 2] += g_a
                g_params[th, g, 3] += g_b
                g_params[th, g, 4] += g_c
                g_params[th, g, 5] += g_o
    # The threads' buffers summed by hand: numba's sum(axis=0), loaded from its on-disk cache, took 4-5 ms a
    # call here against 0.6 ms compiled in the process (a scratch timing on the AVX2 EPYC; numba issue 8085).
    out_params = np.empty((n_rows, 6), dtype)
    out_feats = np.empty((n_rows, n_feat), dtype)
    for r in prange(n_rows):
        for i in range(6):
            v = g_params[0, r, i]
            for th in range(1, n_threads):
                v += g_params[th, r, i]
            out_params[r, i] = v
        for i in range(n_feat):
            v = g_feats[0, r, i]
            for th in range(1, n_threads):
                v += g_feats[th, r, i]
            out_feats[r, i] = v
    return out_params, out_feats


class _TileBins:
    """The binning of C cameras: shared by the forward and the backward pass.

    ``packed`` [C * N, 8] holds each (camera, Gaussian) row's mean, conic and opacity in the kernels' dtype.
    """

    def __init__(self, proj: Projected, opacities: Tensor, width: int, height: int, tile_size: int,
                 dtype: np.dtype):
        if tile_size < 1:
            raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
        self.width, self.height, self.tile_size = width, height, tile_size
        self.tiles_x = (width + tile_size - 1) // tile_size
        self.tiles_y = (height + tile_size - 1) // tile_size
        n_cams, n = (1, proj.means2d.shape[0]) if proj.means2d.ndim == 2 else proj.means2d.shape[:2]
        self.n_cams = n_cams
        # A pixel counts iff opacity * exp(-sigma) >= ALPHA_MIN and sigma <= SIGMA_CUTOFF, i.e. sigma <=
        # min(SIGMA_CUTOFF, ln(opacity / ALPHA_MIN)): a faint Gaussian reaches less far than 3 sigma (gsplat's
        # opacity-aware radius), and one below ALPHA_MIN nowhere. Binning to that smaller ellipse skips only
        # pixels the kernels would skip anyway, so images and gradients are unchanged; fitted heads, whose
        # densified children are faint, render faster.
        packed = np.empty((n_cams * n, _PACK), dtype)
        extents = np.empty((n_cams * n, _N_EXTENTS), np.float64)
        keep = np.empty(n_cams * n, np.bool_)
        _pack_rows(_np(proj.means2d, dtype).reshape(-1, 2), _np(proj.conics, dtype).reshape(-1, 3),
                   _np(opacities, np.float64), _np(proj.extents, np.float64).reshape(-1, 2),
                   _np(proj.valid, np.bool_).reshape(-1), packed, extents, keep)
        # Depths are > near > 0 where valid, so their bit patterns sort as unsigned integers do.
        depths = _np(proj.depths, dtype).reshape(-1)
        order, order_cam = _depth_order(depths.view(np.uint32 if dtype == np.float32 else np.uint64), keep, n_cams)
        self.packed = packed
        self.consts = np.array(_CONSTS, dtype)
        self.offsets, self.ids = _bin_tiles(packed, extents, order, order_cam, n_cams, tile_size, self.tiles_x,
                                            self.tiles_y, numba.get_num_threads())
        # The longest lists first, dealt round-robin: threads finish together although a head's tiles cost
        # from nothing (background) to thousands of entries (hair).
        lengths = np.diff(self.offsets)
        if dtype == np.float32 and len(lengths) and lengths.max() >= 2**24:
            raise ValueError(f"a tile's list holds {lengths.max():,} Gaussians, more than the float32 kernels "
                             "count exactly (2^24): render in float64 or with fewer Gaussians")
        busy = np.flatnonzero(lengths)
        self.tile_order = busy[np.argsort(-lengths[busy], kind="stable")].astype(np.int64)

    def kernel_args(self) -> tuple:
        return (self.packed, self.consts, self.offsets, self.ids, self.tile_order, self.width, self.height,
                self.tile_size, self.tiles_x)


def _np(t: Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, features, opacities, bins: _TileBins):
        dtype = bins.packed.dtype
        n_feat = features.shape[-1]
        feats = _np(features.reshape(-1, n_feat), dtype)
        c, h, w = bins.n_cams, bins.height, bins.width
        out_feat = np.zeros((c, h, w, n_feat), dtype)
        out_t = np.ones((c, h, w), dtype)
        out_n = np.zeros((c, h, w), np.int32)
        drew = np.zeros(len(bins.ids), np.bool_)
        _forward(*bins.kernel_args(), feats, numba.get_num_threads(), out_feat, out_t, out_n, drew)
        ctx.feats, ctx.bins, ctx.out_t, ctx.out_n, ctx.drew = feats, bins, out_t, out_n, drew
        ctx.shapes = (means2d.shape, conics.shape, features.shape, opacities.shape)
        ctx.device = means2d.device
        lead = means2d.shape[:-2]  # () for one camera, (C,) for several
        feat = torch.from_numpy(out_feat.reshape(*lead, h, w, n_feat)).to(means2d.device)
        alpha = torch.from_numpy((1.0 - out_t).reshape(*lead, h, w)).to(means2d.device)
        return feat, alpha

    @staticmethod
    def backward(ctx, grad_feat, grad_alpha):
        bins = ctx.bins
        dtype = bins.packed.dtype
        c, h, w = bins.n_cams, bins.height, bins.width
        g_params, g_feats = _backward(
            *bins.kernel_args(), ctx.feats, numba.get_num_threads(), ctx.out_t, ctx.out_n, ctx.drew,
            _np(grad_feat, dtype).reshape(c, h, w, -1), _np(grad_alpha, dtype).reshape(c, h, w))
        means_shape, conics_shape, feat_shape, opac_shape = ctx.shapes
        g = torch.from_numpy(g_params)
        g_opac = g[:, 5].reshape(c, -1).sum(0)  # opacity is shared by the cameras
        g_feats = torch.from_numpy(g_feats)
        return (g[:, 0:2].reshape(means_shape).to(ctx.device), g[:, 2:5].reshape(conics_shape).to(ctx.device),
                g_feats.reshape(feat_shape).to(ctx.device), g_opac.reshape(opac_shape).to(ctx.device), None)


def composite_cpu(proj: Projected, features: Tensor, opacities: Tensor, width: int, height: int,
                  tile_size: int = DEFAULT_TILE_SIZE) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`perchead.render.reference.composite_reference`, fast.

    ``proj`` may hold C cameras (fields [C, N, ...]) with features [C, N, F]: the result is then
    [C, H, W, F] and [C, H, W], all cameras composited in one parallel pass.
    """
    if features.shape[:-1] != proj.means2d.shape[:-1]:
        raise ValueError(f"features {tuple(features.shape)} must have one row per Gaussian and camera, like "
                         f"means2d {tuple(proj.means2d.shape)}")
    dtype = np.float64 if proj.means2d.dtype == torch.float64 else np.float32
    bins = _TileBins(proj, opacities, width, height, tile_size, dtype)
    return _CompositeCPU.apply(proj.means2d, proj.conics, features, opacities, bins)

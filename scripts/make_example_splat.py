"""Generate the bundled example splat: a stylised head made of ~18k 3D Gaussians.

    python scripts/make_example_splat.py [--out src/perchead/assets/example_head.ply] [--seed 0]

It stands in for a reconstruction until the real model exists (the README's first demo renders it). The
head is an implicit surface -- a smooth union of ellipsoids (cranium, face, jaw, nose, ears, neck) cut flat
under the neck -- covered with flat disc Gaussians; a hair cap of strand-shaped Gaussians floats a few
millimetres above the skull; eyes, brows and lips are small "decal" Gaussians laid just above the skin; a
soft top-front light is baked into the colours. Canonical head frame (docs/design.md section 3): metres, origin near the
head centre, +y up, face towards +z, ~0.18 m wide with the ears, ~0.23 m chin to crown. A mole on the
subject's left cheek (+x) makes a mirrored render easy to spot. Seeded, so the file is reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perchead.geometry import Gaussians
from perchead.io import save_ply

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "perchead" / "assets" / "example_head.ply"

SKIN = np.array([0.88, 0.68, 0.56])
HAIR = np.array([0.24, 0.15, 0.09])
LIGHT = np.array([0.0, 0.55, 0.83]) / np.linalg.norm([0.0, 0.55, 0.83])

# (centre, radii) of the ellipsoids whose smooth union is the head.
SKULL = [((0.0, 0.02, -0.008), (0.077, 0.095, 0.1)),  # cranium
         ((0.0, -0.035, 0.022), (0.064, 0.07, 0.075)),  # face and cheeks
         ((0.0, -0.082, 0.04), (0.04, 0.03, 0.045))]  # jaw and chin
NOSE = [((0.0, -0.005, 0.088), (0.008, 0.026, 0.015)),  # bridge
        ((0.0, -0.03, 0.1), (0.012, 0.01, 0.013))]  # tip and wings
EARS = [((s * 0.077, -0.008, -0.01), (0.013, 0.03, 0.017)) for s in (-1.0, 1.0)]
NECK = [((0.0, -0.14, -0.018), (0.05, 0.09, 0.052))]
NECK_CUT_Y = -0.2  # flat bottom of the bust


def ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate signed distance to an ellipsoid (exact on the axes, good enough for a level set)."""
    q = (p - np.asarray(centre)) / np.asarray(radii)
    return (np.linalg.norm(q, axis=-1) - 1.0) * min(radii)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def union(p: np.ndarray, parts, k: float, base: np.ndarray | None = None) -> np.ndarray:
    d = base
    for centre, radii in parts:
        e = ellipsoid(p, centre, radii)
        d = e if d is None else smooth_min(d, e, k)
    return d


def skull_sdf(p: np.ndarray) -> np.ndarray:
    return union(p, SKULL, 0.02)


def head_sdf(p: np.ndarray) -> np.ndarray:
    d = union(p, NOSE, 0.012, union(p, EARS, 0.006, union(p, NECK, 0.025, skull_sdf(p))))
    return np.maximum(d, NECK_CUT_Y - p[..., 1])  # flat cut under the neck closes the surface


def gradient(f, p: np.ndarray, h: float = 1e-4) -> np.ndarray:
    g = np.stack([f(p + h * e) - f(p - h * e) for e in np.eye(3)], axis=-1) / (2 * h)
    return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)


def project_to_surface(f, p: np.ndarray, iters: int = 12) -> np.ndarray:
    for _ in range(iters):
        p = p - f(p)[:, None] * gradient(f, p)
    return p


def sample_surface(f, rng: np.random.Generator, spacing: float, n_candidates: int,
                   lo=(-0.12, -0.21, -0.13), hi=(0.12, 0.13, 0.14)) -> np.ndarray:
    """Roughly evenly spaced points on the level set f = 0: project random points, keep one per voxel."""
    p = rng.uniform(lo, hi, size=(n_candidates, 3))
    p = project_to_surface(f, p)
    p = p[np.abs(f(p)) < 2e-4]
    _, keep = np.unique(np.floor(p / spacing).astype(np.int64), axis=0, return_index=True)
    return p[np.sort(keep)]


def frames_from_normals(n: np.ndarray, along: np.ndarray | None = None) -> np.ndarray:
    """Rotation matrices whose third column is the normal; the first follows ``along`` (made tangent)."""
    if along is None:
        along = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t1 = along - (along * n).sum(-1, keepdims=True) * n
    t1 /= np.maximum(np.linalg.norm(t1, axis=-1, keepdims=True), 1e-12)
    t2 = np.cross(n, t1)
    return np.stack([t1, t2, n], axis=-1)


def quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] -> unit quaternions (w, x, y, z)."""
    m = r
    w = np.sqrt(np.maximum(0.0, 1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2])) / 2
    x = np.sqrt(np.maximum(0.0, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2])) / 2
    y = np.sqrt(np.maximum(0.0, 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2])) / 2
    z = np.sqrt(np.maximum(0.0, 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2])) / 2
    x = np.copysign(x, m[:, 2, 1] - m[:, 1, 2])
    y = np.copysign(y, m[:, 0, 2] - m[:, 2, 0])
    z = np.copysign(z, m[:, 1, 0] - m[:, 0, 1])
    q = np.stack([w, x, y, z], axis=-1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def hairline(p: np.ndarray) -> np.ndarray:
    """Height above which the skull is covered by hair: high over the forehead, low at the nape."""
    return np.interp(p[:, 2], [-0.1, -0.045, -0.005, 0.045, 0.12], [-0.085, -0.075, 0.018, 0.048, 0.052])


def shade(rgb: np.ndarray, normals: np.ndarray, amount: float = 0.3) -> np.ndarray:
    lit = np.clip(normals @ LIGHT, 0.0, 1.0)
    return rgb * ((1 - amount) + amount * lit)[:, None]


def skin_colour(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rgb = np.tile(SKIN, (len(p), 1)) * rng.normal(1.0, 0.015, (len(p), 1))
    rgb[np.abs(p[:, 0]) > 0.072] *= [0.97, 0.9, 0.88]  # ears a touch pinker
    cheeks = np.exp(-(((np.abs(p[:, 0]) - 0.042) / 0.016) ** 2 + ((p[:, 1] + 0.03) / 0.014) ** 2))
    cheeks *= p[:, 2] > 0
    rgb = rgb * (1 - 0.08 * cheeks[:, None]) + 0.08 * cheeks[:, None] * np.array([0.9, 0.5, 0.5])
    rgb[p[:, 1] < NECK_CUT_Y + 1e-3] *= 0.85  # the flat cut under the neck
    return rgb


def in_feature_area(p: np.ndarray) -> np.ndarray:
    """Front-of-face areas (eyes and brows, mouth, mole) sampled finely so small features stay crisp."""
    ax, y = np.abs(p[:, 0]), p[:, 1]
    eyes = (ax > 0.009) & (ax < 0.058) & (y > 0.001) & (y < 0.044)
    mouth = (ax < 0.028) & (y > -0.067) & (y < -0.044)
    mole = np.hypot(p[:, 0] - 0.045, y + 0.038) < 0.006
    return (eyes | mouth | mole) & ((p[:, 2] > 0.03) if p.shape[1] == 3 else True)


def skin_gaussians(rng, spacing: float):
    p = sample_surface(head_sdf, rng, spacing, 400_000)
    p = p[~in_feature_area(p)]  # replaced by the finer face_gaussians()
    n = gradient(head_sdf, p)
    rgb = skin_colour(p, rng)
    scalp = (p[:, 1] > hairline(p)) & (np.abs(p[:, 0]) < 0.072)
    rgb[scalp] = HAIR * 0.8  # under the hair cap, so gaps between strands do not flash skin
    # Well under the cap the scalp is never seen: keep one disc in four there, doubled in size.
    hidden = scalp & (p[:, 1] > hairline(p) + 0.012) & (rng.uniform(size=len(p)) < 0.75)
    grow = np.where(scalp, 2.0, 1.0)[~hidden, None]
    p, n, rgb = p[~hidden], n[~hidden], rgb[~hidden]
    scales = np.tile([0.75 * spacing, 0.75 * spacing, 0.2 * spacing], (len(p), 1)) * grow
    return p, frames_from_normals(n), scales, shade(rgb, n), np.full(len(p), 0.97)


def hair_gaussians(rng, n_candidates: int):
    def hair_sdf(q):
        # A shell over the skull, fuller on top than at the sides and nape.
        return skull_sdf(q) - (0.006 + 0.008 * np.clip((q[:, 1] + 0.02) / 0.12, 0.0, 1.0))

    p = rng.uniform((-0.11, -0.12, -0.13), (0.11, 0.14, 0.13), (n_candidates, 3))
    p = project_to_surface(hair_sdf, p)
    p = p[np.abs(hair_sdf(p)) < 2e-4]
    keep = (p[:, 1] > hairline(p) - 0.004) & (head_sdf(p) > 0.003)  # not buried in the neck or ears
    p = p[keep]
    _, first = np.unique(np.floor(p / 0.0042).astype(np.int64), axis=0, return_index=True)
    p = p[np.sort(first)]
    n = gradient(hair_sdf, p)
    # Strands flow away from a crown point at the back of the top of the head.
    crown = np.array([0.0, 0.115, -0.03])
    flow = p - crown
    flow[:, 2] += 0.05 * (p[:, 2] > 0.03)  # fringe combed forward and down over the forehead
    tone = rng.normal(1.0, 0.12, (len(p), 1)).clip(0.7, 1.35)
    rgb = shade(np.clip(HAIR * tone, 0.0, 1.0), n, 0.45)
    scales = np.column_stack([rng.uniform(0.005, 0.008, len(p)), np.full(len(p), 0.0018),
                              np.full(len(p), 0.0006)])
    return p, frames_from_normals(n, flow), scales, rgb, np.full(len(p), 0.9)


def surface_from_front(xy: np.ndarray) -> np.ndarray:
    """First skin points hit by rays along -z through (x, y) (rays that miss the head are dropped)."""
    zs = np.arange(0.16, -0.02, -0.0005)
    pts = np.concatenate([np.repeat(xy[:, None, :], len(zs), 1),
                          np.broadcast_to(zs[None, :, None], (len(xy), len(zs), 1))], -1)
    inside = head_sdf(pts.reshape(-1, 3)).reshape(len(xy), len(zs)) < 0
    first = pts[np.arange(len(xy)), inside.argmax(axis=1)]
    return project_to_surface(head_sdf, first[inside.any(axis=1)], 4)


def paint_face(xy: np.ndarray) -> np.ndarray:
    """Colours of eyes, brows, lips and a mole at front-view positions (x, y); NaN where it is skin."""
    ax, y = np.abs(xy[:, 0]), xy[:, 1]
    rgb = np.full((len(xy), 3), np.nan)

    def paint(mask, colour):
        rgb[mask] = colour

    # Eyes: almond-shaped white, brown iris, black pupil, a dark upper lid line.
    ex, ey = 0.031, 0.012
    eye_shape = ((ax - ex) / 0.0125) ** 2 + ((y - ey) / (0.0058 - 0.0015 * np.sign(y - ey))) ** 2
    paint(eye_shape < 1.0, [0.93, 0.92, 0.9])
    iris = np.hypot(ax - ex, y - ey)
    paint((iris < 0.0052) & (eye_shape < 1.0), [0.33, 0.22, 0.12])
    paint((iris < 0.0022) & (eye_shape < 1.0), [0.04, 0.03, 0.03])
    paint((eye_shape >= 0.95) & (eye_shape < 1.6) & (y > ey), [0.22, 0.14, 0.1])
    # Brows: arcs above the eyes, thicker towards the nose.
    arc = 0.031 + 0.006 * (1 - ((ax - 0.033) / 0.022) ** 2)
    paint((np.abs(y - arc) < 0.0035 - 0.03 * (ax - 0.015).clip(0)) & (ax > 0.013) & (ax < 0.054),
          [0.2, 0.12, 0.07])
    # Lips: a bow-shaped upper lip, a fuller lower lip and the dark line between them.
    mouth_y = -0.055
    width = 0.023 * np.sqrt(np.clip(1 - (ax / 0.023) ** 2, 0, 1))
    bow = 0.0015 * (ax < 0.005) - 0.001 * (ax < 0.002)  # Cupid's bow
    upper = (y > mouth_y) & (y < mouth_y + 0.006 * width / 0.023 + bow)
    lower = (y <= mouth_y) & (y > mouth_y - 0.008 * width / 0.023)
    paint((upper | lower) & (ax < 0.023), [0.72, 0.36, 0.36])
    paint((np.abs(y - mouth_y) < 0.0009) & (ax < 0.021), [0.35, 0.13, 0.13])
    # A mole on the subject's left cheek (+x): tells a mirrored render from a correct one.
    paint(np.hypot(xy[:, 0] - 0.045, y + 0.038) < 0.0022, [0.3, 0.18, 0.12])
    return rgb


def face_gaussians(rng, spacing: float = 0.00115):
    """Small skin discs over the feature areas, painted with the eyes, brows, lips and mole."""
    gx, gy = np.meshgrid(np.arange(-0.065, 0.065, spacing), np.arange(-0.075, 0.05, spacing))
    xy = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.3, 0.3, (gx.size, 2)) * spacing
    xy = xy[in_feature_area(xy)]
    p = surface_from_front(xy)
    p = p[in_feature_area(p)]
    n = gradient(head_sdf, p)
    rgb = paint_face(p[:, :2])
    skin = np.isnan(rgb[:, 0])
    rgb[skin] = skin_colour(p[skin], rng)
    # The grid is even in the front view; where the face turns away the discs stretch to close the gaps.
    stretch = 1.0 / np.clip(n[:, 2], 0.35, 1.0)
    tangent = 0.7 * spacing * stretch
    scales = np.column_stack([tangent, tangent, np.full(len(p), 0.2 * spacing)])
    return p, frames_from_normals(n), scales, shade(rgb, n), np.full(len(p), 0.97)


def make_head(seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    parts = [skin_gaussians(rng, 0.0038), face_gaussians(rng), hair_gaussians(rng, 260_000)]
    means, rots, scales, rgb, opacity = (np.concatenate(x) for x in zip(*parts, strict=True))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians.from_activated(t(means), t(scales), t(quat_from_matrix(rots)), t(opacity),
                                    t(np.clip(rgb, 0.0, 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    head = make_head(args.seed)
    save_ply(head, args.out)
    lo, hi = head.means.min(0).values.tolist(), head.means.max(0).values.tolist()
    print(f"wrote {args.out}: {len(head):,} Gaussians, {args.out.stat().st_size / 1e6:.2f} MB, "
          f"extent x {lo[0]:.3f}..{hi[0]:.3f}  y {lo[1]:.3f}..{hi[1]:.3f}  z {lo[2]:.3f}..{hi[2]:.3f} m")


if __name__ == "__main__":
    main()

"""A procedural closed head surface laid out as a square UV position map (an atlas).

The model's template (docs/design.md section 3) is a ``resolution x resolution`` grid of surface points where a 4x4
block is one 3D token, so grid neighbours must be surface neighbours and points should cover the surface
evenly. The synthetic-data generator builds its heads from the same map with a random :class:`HeadShape`.

Atlas layout for a resolution R (R = 256 gives the numbers in brackets; s = R / 8 rounded to a multiple of 8):

* rows ``0..R-s``, columns ``0..R-s`` [224 x 224]: skull and face, an equal-area *octahedral* map of the
  sphere of directions (Clarberg 2008) with the face (+z) at the square's centre, so the face has no seam and
  cells cover near-equal areas (no pole clustering); each column is then resampled half-way towards equal
  surface arc length, which keeps the cells under the chin (where the surface grazes the rays) compact.
  The square's border folds onto the back of the head: a seam (neighbours across it are not stored next to
  each other) that no 4x4 block crosses.
* columns ``R-s..R``, top half / bottom half of those rows [32 x 112 each]: the left (+x) and right (-x)
  ears, each a thin cupped shell (rows: top to bottom of the ear; columns: around its rim).
* rows ``R-s..R`` [32 x 256]: the neck, a tube that starts exactly on the underside of the head and is closed
  by a flat cap at the bottom. It is stored as 64 rows x 128 columns (around the neck, from the front) cut
  in two: the upper 32 rows in the left half, the lower 32 rows (ending with the cap) in the right half.

The head is a star-shaped radial surface (a superellipsoid skull with separate front/back and top/bottom
axes, a jaw and chin deformation, and face relief as displacements along the skull normal), which keeps the
map continuous and makes "inside/outside" a cheap radial test. Everything is closed-form torch (timed by
benchmarks/bench_synth.py).
Coordinates: the canonical head frame (metres, origin near the head centre ~ between the ear canals, +y up,
face towards +z, subject's left ear on +x).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

REGION_NAMES = ("face", "scalp", "ears", "neck")  # region label ids 0..3
FACE, SCALP, EARS, NECK = range(4)


@dataclass
class HeadShape:
    """Parameters of a procedural head; the defaults are an average adult head (metres).

    Landmark heights are in the head frame: eyes near y = 0 (the vertical middle of the head), chin at
    ``-chin_drop``, crown at ``crown_height``.
    """

    width: float = 0.155  # skull width, ear to ear (without ears)
    depth_front: float = 0.097  # head centre -> forehead (glabella region)
    depth_back: float = 0.100  # head centre -> back of the skull (occiput)
    crown_height: float = 0.117  # head centre -> top of the skull
    chin_drop: float = 0.115  # head centre -> bottom of the chin
    skull_base: float = 0.060  # head centre -> underside at the back (where the neck meets the skull)
    squareness: float = 2.4  # superellipsoid exponent of the skull (2 = ellipsoid, larger = boxier)
    forehead_slope: float = 0.2  # how much the upper forehead leans back (0 = vertical)
    occiput_bulge: float = 0.006  # extra bump at the back of the skull
    jaw_drop: float = 0.2  # extra downward stretch of the lower front (jaw and chin)
    jaw_width: float = 0.82  # lower-face width relative to the skull width at the same height
    chin_width: float = 0.030  # half-width of the chin pad
    chin_protrusion: float = 0.008
    cheekbone: float = 0.006
    eye_spacing: float = 0.032  # half the distance between the pupils
    eye_height: float = 0.0
    eye_depth: float = 0.012  # how deep the eye sockets are
    eyeball: float = 0.0065  # eyeball bulge inside the socket
    brow_ridge: float = 0.006
    nose_length: float = 0.050  # bridge (between the eyes) to the tip, vertically
    nose_width: float = 0.017  # half-width across the nostrils
    nose_projection: float = 0.024  # how far the tip stands out of the face
    mouth_height: float = -0.068
    mouth_width: float = 0.026  # half-width
    lip_fullness: float = 0.007
    ear_height: float = 0.062
    ear_width: float = 0.034
    ear_protrusion_deg: float = 22.0  # angle between the ear and the side of the head
    ear_y: float = -0.012  # centre height of the ear
    ear_z: float = -0.012  # centre front/back position of the ear
    neck_radius_x: float = 0.052
    neck_radius_z: float = 0.058
    neck_z: float = -0.018  # front/back offset of the neck axis
    neck_bottom: float = -0.200  # y of the neck's bottom cap

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value):
                raise ValueError(f"HeadShape.{f.name} must be finite, got {value}")
        positive = ("width", "depth_front", "depth_back", "crown_height", "chin_drop", "skull_base",
                    "nose_length", "nose_width", "ear_height", "ear_width", "neck_radius_x", "neck_radius_z")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"HeadShape.{name} must be positive, got {getattr(self, name)}")
        if self.neck_bottom > -self.skull_base:
            raise ValueError("HeadShape.neck_bottom must lie below the skull base (more negative)")


@dataclass
class HeadSurfaceMap:
    """Surface points on a [R, R] grid: positions, unit outward normals and region labels (REGION_NAMES)."""

    xyz: Tensor  # [R, R, 3] float32, metres, canonical head frame
    normals: Tensor  # [R, R, 3] float32, unit, pointing out of the head
    region: Tensor  # [R, R] int64

    @property
    def resolution(self) -> int:
        return self.xyz.shape[0]


@dataclass(frozen=True)
class AtlasLayout:
    """Where each part lives in the map (row/column slices)."""

    resolution: int
    head: int  # side of the head square
    strip: int  # width of the ear column strip and height of the neck row strip

    @classmethod
    def for_resolution(cls, resolution: int) -> AtlasLayout:
        if resolution < 32 or resolution % 8:
            raise ValueError(f"head surface map resolution must be a multiple of 8 and >= 32, "
                             f"got {resolution}")
        strip = 8 * max(1, round(resolution / 64))
        return cls(resolution, resolution - strip, strip)


def _smoothstep(e0: float, e1: float, x: Tensor) -> Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _exp_neg(q: Tensor) -> Tensor:
    # exp(-q) with q clamped: far tails would underflow into denormals, which are ~1000x slower on CPUs.
    return torch.exp(-q.clamp(max=60.0))


def _gauss(x: Tensor, y: Tensor, cx: float, cy: float, sx: float, sy: float) -> Tensor:
    return _exp_neg(0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _pair(x: Tensor, y: Tensor, cx: float, cy: float, sx: float, sy: float) -> Tensor:
    """A left/right symmetric pair of bumps (summed, not evaluated at |x|, which would crease the midline)."""
    return _gauss(x, y, cx, cy, sx, sy) + _gauss(x, y, -cx, cy, sx, sy)


def octahedral_directions(n: int) -> Tensor:
    """Unit directions [n, n, 3] of an equal-area octahedral map, +z at the centre, row 0 at the top (+y)."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2.0 - 1.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    return _octahedral(u, -v)


def _octahedral(u: Tensor, v: Tensor) -> Tensor:
    # Clarberg, "Fast equal-area mapping of the (hemi)sphere using SIMD", JGT 2008.
    d = 1.0 - (u.abs() + v.abs())
    r = 1.0 - d.abs()
    phi = torch.where(r > 0, (v.abs() - u.abs()) / r.clamp_min(1e-12) + 1.0, torch.zeros_like(r))
    phi = phi * (math.pi / 4)
    f = r * torch.sqrt((2.0 - r * r).clamp_min(0.0))
    x = torch.sign(u) * f * torch.cos(phi)
    y = torch.sign(v) * f * torch.sin(phi)
    z = torch.sign(d) * (1.0 - r * r)
    return torch.nn.functional.normalize(torch.stack([x, y, z], -1), dim=-1)


def _head_directions(n: int, s: HeadShape, warp: float = 0.5) -> Tensor:
    """Octahedral directions [n, n, 3] resampled along each column towards equal surface arc length.

    The radial surface grazes the rays under the chin, where the equal-area map's cells stretch to 2.4 cm
    blocks; mixing half of an arc-length parameterisation into each column brings every 4x4 block under
    2 cm at 256 (and evens out the cell areas too), while the map stays continuous and monotonic.
    """
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2.0 - 1.0
    fine = (torch.arange(4 * n, dtype=torch.float64) + 0.5) / (4 * n) * 2.0 - 1.0
    vf, u = torch.meshgrid(fine, c, indexing="ij")
    p = _head_points(_octahedral(u, -vf), s)
    arc = torch.cat([torch.zeros(1, n, dtype=torch.float64), (p[1:] - p[:-1]).norm(dim=-1).cumsum(0)])
    t = (1.0 - warp) * ((fine - fine[0]) / (fine[-1] - fine[0]))[:, None] + warp * arc / arc[-1]
    want = ((np.arange(n) + 0.5) / n)
    v = np.stack([np.interp(want, t[:, j].numpy(), fine.numpy()) for j in range(n)], 1)
    return _octahedral(c.expand(n, n), -torch.from_numpy(v))


def _skull_axes(d: Tensor, s: HeadShape) -> Tensor:
    """Per-direction semi-axes (a, b, c) of the piecewise ellipsoid (smooth across the middle planes)."""
    dy, dz = d[..., 1], d[..., 2]
    front = _smoothstep(-0.25, 0.25, dz)
    up = _smoothstep(-0.15, 0.15, dy)
    c = s.depth_back + (s.depth_front - s.depth_back) * front
    # The underside is shallow at the back (skull base) and deep at the front (down to the chin).
    bottom = s.skull_base + (s.chin_drop - s.skull_base) * _smoothstep(-0.3, 1.0, dz)
    b = bottom + (s.crown_height - bottom) * up
    a = torch.full_like(dy, s.width / 2)
    return torch.stack([a, b, c], -1)


def _head_points(d: Tensor, s: HeadShape) -> Tensor:
    """Surface point [..., 3] of the head (skull + face) in unit direction d [..., 3] from the origin."""
    axes = _skull_axes(d, s)
    # A superellipsoid (exponent > 2) gives the broad, flat-sided skull vault an ellipsoid lacks.
    e = s.squareness
    base = d / (((d / axes).abs() ** e).sum(-1, keepdim=True)) ** (1.0 / e)
    x, y, z = base.unbind(-1)
    front = _smoothstep(0.15, 0.6, z / s.depth_front)

    # Lower face: drop the chin below the skull base, narrow the jaw and bring the chin forward so the face
    # below the nose is near vertical.
    y = y * (1.0 + s.jaw_drop * _smoothstep(-0.2, 0.7, z / s.depth_front) * (y < 0))
    below = _smoothstep(-0.02, -s.chin_drop, y)
    x = x * (1.0 - (1.0 - s.jaw_width) * below * front)
    z = z + 0.35 * below * (-y - 0.02).clamp_min(0.0) * front
    # Forehead leans back above the brows; the back of the skull bulges a little.
    z = z - s.forehead_slope * (y - 0.03).clamp_min(0.0) * front * 0.35
    back = _smoothstep(-0.2, -0.8, base[..., 2] / s.depth_back)
    z = z - s.occiput_bulge * back * _gauss(x, y, 0.0, 0.035, 0.06, 0.05)
    p = torch.stack([x, y, z], -1)

    # Face relief: signed heights along the skull normal, only on the front.
    ex, ey = s.eye_spacing, s.eye_height
    h = -s.eye_depth * _pair(x, y, ex, ey, 0.017, 0.0115)
    h = h + s.eyeball * _pair(x, y, ex, ey - 0.001, 0.0085, 0.0065)
    h = h + s.brow_ridge * _pair(x, y, ex - 0.004, ey + 0.021, 0.022, 0.0065)
    h = h + 0.5 * s.brow_ridge * _gauss(x, y, 0.0, ey + 0.015, 0.012, 0.012)  # glabella
    h = h + s.cheekbone * _pair(x, y, ex + 0.018, ey - 0.025, 0.016, 0.014)
    # Nose: a ridge from the bridge to the tip, rising and widening towards the tip, cut off under it.
    top, tip = ey + 0.010, ey + 0.010 - s.nose_length
    t = ((top - y) / s.nose_length).clamp(0.0, 1.0)
    under = torch.sigmoid((y - tip) / 0.0035) * torch.sigmoid((top + 0.004 - y) / 0.004)  # tip .. bridge
    ridge_w = 0.005 + 0.35 * s.nose_width * t
    h = h + (0.006 + (s.nose_projection - 0.006) * t**1.4) * _exp_neg(0.5 * (x / ridge_w) ** 2) * under
    h = h + 0.35 * s.nose_projection * _pair(x, y, 0.75 * s.nose_width, tip + 0.006, 0.006, 0.006)  # alae
    h = h - 0.003 * _pair(x, y, s.nose_width + 0.006, tip + 0.004, 0.004, 0.008)  # alar crease
    # Lips, mouth slit, and the groove above the chin.
    my, mw = s.mouth_height, s.mouth_width
    h = h + s.lip_fullness * _gauss(x, y, 0.0, my + 0.0065, mw * 0.75, 0.0045)
    h = h + s.lip_fullness * 0.95 * _gauss(x, y, 0.0, my - 0.0065, mw * 0.7, 0.005)
    h = h - 0.004 * _gauss(x, y, 0.0, my, mw * 0.85, 0.0013)
    h = h - 0.003 * _gauss(x, y, 0.0, my - 0.019, 0.02, 0.005)
    h = h + s.chin_protrusion * _gauss(x, y, 0.0, -s.chin_drop + 0.017, s.chin_width, 0.014)
    grad = torch.sign(base) * (base / axes).abs() ** (e - 1.0) / axes
    normal = torch.nn.functional.normalize(grad, dim=-1)
    return p + (h * front).unsqueeze(-1) * normal


def _head_normals(d: Tensor, s: HeadShape, eps: float = 1e-4) -> Tensor:
    helper = torch.where(d[..., 1:2].abs() < 0.9, torch.tensor([0.0, 1.0, 0.0], dtype=d.dtype),
                         torch.tensor([1.0, 0.0, 0.0], dtype=d.dtype))
    t1 = torch.nn.functional.normalize(torch.linalg.cross(helper, d, dim=-1), dim=-1)
    t2 = torch.linalg.cross(d, t1, dim=-1)

    def at(e: Tensor) -> Tensor:
        return _head_points(torch.nn.functional.normalize(d + eps * e, dim=-1), s)

    n = torch.linalg.cross(at(t1) - at(-t1), at(t2) - at(-t2), dim=-1)
    return n


def _inside_head(q: Tensor, s: HeadShape) -> Tensor:
    """True where points q [..., 3] lie inside the (star-shaped) head."""
    d = torch.nn.functional.normalize(q, dim=-1)
    return q.norm(dim=-1) < _head_points(d, s).norm(dim=-1)


def _neck_cap_rows(rows: int) -> int:
    return max(2, rows // 4)


def _neck_points(theta: Tensor, k: Tensor, s: HeadShape, rows: int) -> Tensor:
    """Neck surface at angle theta (0 = front, +x side at pi/2) and continuous row coordinate k in [0, rows].

    Rows ``0..rows-cap`` run down the tube from the head's underside; the last ``cap`` rows close the bottom.
    """
    cap = _neck_cap_rows(rows)
    cx = s.neck_radius_x * torch.sin(theta)
    cz = s.neck_z + s.neck_radius_z * torch.cos(theta)
    # Where the vertical line through this column meets the head from below (bisection on the radial test).
    lo = torch.full_like(theta, s.neck_bottom)
    hi = torch.zeros_like(theta)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        inside = _inside_head(torch.stack([cx, mid, cz], -1), s)
        hi = torch.where(inside, mid, hi)
        lo = torch.where(inside, lo, mid)
    y_top = hi + 0.002  # start just inside the head: no gap at the seam
    tube = rows - cap
    t = (k / tube).clamp(max=1.0)
    y = y_top + (s.neck_bottom - y_top) * t
    shrink = 1.0 - ((k - tube) / cap).clamp(0.0, 1.0)  # cap rows: rings shrinking to the axis
    x = cx * shrink
    z = s.neck_z + (cz - s.neck_z) * shrink
    return torch.stack([x, y, z], -1)


def _ear_frame(s: HeadShape, side: float) -> tuple[Tensor, Tensor]:
    """Origin (ear's front edge at the skull) and rotation (columns: up, back, out axes) of one ear."""
    yaw = math.radians(s.ear_protrusion_deg)
    tilt = math.radians(12.0)  # ears lean back a little
    up = torch.tensor([0.0, math.cos(tilt), -math.sin(tilt)], dtype=torch.float64)
    cy = math.cos(yaw)
    back = torch.tensor([side * math.sin(yaw), math.sin(tilt) * cy, -math.cos(tilt) * cy],
                        dtype=torch.float64)
    back = torch.nn.functional.normalize(back - (back @ up) * up, dim=0)
    out = torch.linalg.cross(up, back)
    if out[0] * side < 0:
        out = -out
    # Front edge of the ear sits just inside the skull's side at the ear's height.
    front_z = s.ear_z + 0.5 * s.ear_width * math.cos(yaw)
    d = torch.nn.functional.normalize(torch.tensor([side, s.ear_y / (s.width / 2), front_z / (s.width / 2)],
                                                   dtype=torch.float64), dim=0)
    skull_x = _head_points(d, s)[0].abs().item()
    origin = torch.tensor([side * (skull_x - 0.004), s.ear_y, front_z], dtype=torch.float64)
    return origin, torch.stack([up, back, out], -1)


def _ear_points(alpha: Tensor, hn: Tensor, s: HeadShape, side: float) -> Tensor:
    """Ear shell: hn in [-1, 1] from the top to the bottom of the ear, alpha the angle around its rim."""
    origin, rot = _ear_frame(s, side)
    rho = torch.sqrt((1.0 - hn * hn).clamp_min(0.0))
    # Outline: wider at the top (helix) than at the lobe.
    half_w = 0.5 * s.ear_width * (0.85 + 0.15 * hn)
    w = rho * torch.cos(alpha)
    thick = 0.006 * (s.ear_height / 0.062)
    sa = torch.sin(alpha)
    # Concha: the outer face is thin in the middle and thick at the rim, so it reads as a cup.
    bowl = _exp_neg(((hn + 0.1) / 0.55) ** 2 + (w / 0.6) ** 2)
    t = torch.where(sa > 0, rho * sa * thick * (1.0 - 0.8 * bowl), rho * sa * thick * 0.6)
    local_up = hn * 0.5 * s.ear_height
    local_back = (w + 1.0) * half_w  # w = -1 is the front edge at the skull
    local = torch.stack([local_up, local_back, t], -1)
    return origin + local @ rot.T


def _normals_from_grid(fn, a: Tensor, b: Tensor, eps: float = 1e-4) -> Tensor:
    # Tangents are normalised first: near the cap's centre they are tiny and their raw cross product would
    # vanish under normalize()'s epsilon.
    ta = torch.nn.functional.normalize(fn(a + eps, b) - fn(a - eps, b), dim=-1)
    tb = torch.nn.functional.normalize(fn(a, b + eps) - fn(a, b - eps), dim=-1)
    return torch.linalg.cross(ta, tb, dim=-1)


def _orient(n: Tensor, p: Tensor, inner: Tensor) -> Tensor:
    n = torch.nn.functional.normalize(n, dim=-1)
    flip = ((p - inner) * n).sum(-1, keepdim=True) < 0
    return torch.where(flip, -n, n)


def head_points(directions: Tensor, shape: HeadShape | None = None) -> tuple[Tensor, Tensor]:
    """Points and unit outward normals of the skull-and-face surface along unit ``directions`` [..., 3] from the
    origin (the same surface as the map's head square): lets callers sample details finer than the map."""
    s = HeadShape() if shape is None else shape
    with _one_thread():
        d = torch.nn.functional.normalize(torch.as_tensor(directions, dtype=torch.float64), dim=-1)
        p = _head_points(d, s)
        n = _orient(_head_normals(d, s), p, torch.zeros(3, dtype=torch.float64))
    return p.float(), n.float()


@contextmanager
def _one_thread():
    # Hundreds of small element-wise ops: on a busy machine torch's thread pool spends far longer waking
    # workers than computing (measured 15 s instead of 0.1 s with other jobs running), so run them serially.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def head_surface_map(shape: HeadShape | None = None, resolution: int = 256) -> HeadSurfaceMap:
    """The head surface of ``shape`` (an average head by default) as a [R, R] atlas (see module docstring)."""
    with _one_thread():
        return _head_surface_map(HeadShape() if shape is None else shape, resolution)


def _head_surface_map(s: HeadShape, resolution: int) -> HeadSurfaceMap:
    lay = AtlasLayout.for_resolution(resolution)
    R, H, S = resolution, lay.head, lay.strip
    xyz = torch.zeros(R, R, 3, dtype=torch.float64)
    nrm = torch.zeros(R, R, 3, dtype=torch.float64)
    region = torch.zeros(R, R, dtype=torch.int64)

    # Head square.
    d = _head_directions(H, s)
    p = _head_points(d, s)
    xyz[:H, :H] = p
    nrm[:H, :H] = _orient(_head_normals(d, s), p, torch.zeros(3, dtype=torch.float64))
    x, y, z = p.unbind(-1)
    # Face: the front of the head below the hairline and in front of the ears.
    is_face = (z > 0.35 * s.depth_front) & (y < s.eye_height + 0.055) & (y > -s.chin_drop - 0.02)
    region[:H, :H] = torch.where(is_face, FACE, SCALP)

    # Ears: right strip, top half = left ear (+x), bottom half = right ear (-x).
    half = H // 2
    cols = (torch.arange(S, dtype=torch.float64) + 0.5) / S * 2 * math.pi
    rows = 1.0 - (torch.arange(half, dtype=torch.float64) + 0.5) / half * 2.0  # equal-area rows
    hn, alpha = torch.meshgrid(rows, cols, indexing="ij")
    for k, side in enumerate((1.0, -1.0)):
        def ear(a: Tensor, h: Tensor, side: float = side) -> Tensor:
            return _ear_points(a, h.clamp(-1.0, 1.0), s, side)

        pe = ear(alpha, hn)
        origin, rot = _ear_frame(s, side)
        centre = origin + rot[:, 1] * 0.5 * s.ear_width
        ne = _normals_from_grid(ear, alpha, hn)
        sl = slice(k * half, (k + 1) * half)
        xyz[sl, H:] = pe
        nrm[sl, H:] = _orient(ne, pe, centre)
        region[sl, H:] = EARS

    # Neck: the bottom strip holds 2*S neck rows of R/2 columns each (upper half of the neck on the left,
    # lower half and cap on the right), which keeps its cells near square; columns go around from the front.
    nc, nr = R // 2, 2 * S
    theta = (torch.arange(nc, dtype=torch.float64) + 0.5) / nc * 2 * math.pi
    k2, th = torch.meshgrid(torch.arange(nr, dtype=torch.float64) + 0.5, theta, indexing="ij")

    def neck(t: Tensor, k: Tensor) -> Tensor:
        return _neck_points(t, k, s, nr)

    pn = neck(th, k2)
    # Outward reference: the neck axis at the same height on the tube, a point above the cap on the cap.
    axis_y = torch.where(k2 < nr - _neck_cap_rows(nr), pn[..., 1], torch.full_like(th, s.neck_bottom + 0.03))
    inner = torch.stack([torch.zeros_like(th), axis_y, torch.full_like(th, s.neck_z)], -1)
    nn_ = _orient(_normals_from_grid(neck, th, k2), pn, inner)
    for half_idx in range(2):
        rows_sl = slice(half_idx * S, (half_idx + 1) * S)
        cols_sl = slice(half_idx * nc, (half_idx + 1) * nc)
        xyz[H:, cols_sl] = pn[rows_sl]
        nrm[H:, cols_sl] = nn_[rows_sl]
    region[H:, :] = NECK
    return HeadSurfaceMap(xyz.float(), nrm.float(), region)

"""Procedural synthetic heads: random head shapes dressed as 3D Gaussians, rendered into the dataset format.

Why: no real head dataset can be downloaded here, yet training, tests and the CPU demo need multi-view heads
with exact cameras, masks and face-parsing maps. Each subject is

* a random :class:`HeadShape` turned into surfels (flat Gaussians) on :func:`head_surface_map`, plus finer
  surfels for the eyes, brows and lips sampled with :func:`head_points`;
* painted: skin tone, iris colour, brows, lips; labelled per Gaussian with the 19 face-parsing classes;
* hair: a scalp layer under a hairline, a volume shell, optionally long hair hanging down the back and sides,
  and a bun -- colour, volume, length, hairline and strand pattern all random, so backs of heads differ;
* optional glasses, earrings, necklace and a collar;
* with ``heads="asymmetric"`` (the default), one-sided features (:class:`Asymmetry`): a hair parting on one
  side with a side-swept fringe and more hair volume on the other, hair tucked behind one ear while a lock
  (or the long hair) covers the other, a single hoop earring on the tucked side, moles and a freckle patch
  on one cheek, and in the studio a key light from one side. Each side is drawn at random per subject, so a
  mirrored view of one profile is not the other profile. ``heads="symmetric"`` leaves them out and gives
  exactly the heads of the generator before they existed;
* lit by baking a simple shading from the normals into the colours: "studio" subjects under one even
  light (plus the one-sided key of asymmetric heads) seen from ``views`` cameras all around, "wild" subjects
  under a random coloured key + ambient light seen from one near-frontal camera.

Subject ``i`` is a pure function of ``(seed, i)`` (numpy SeedSequence), so it is the same whatever the number of
subjects, and its split too (train / val / test by a per-subject draw against ``split_fractions``). The
asymmetric features come from a stream of their own (``ASYMMETRY_STREAM``), so the shape, appearance and
cameras of subject ``i`` are the same for both kinds of heads.
Rendering goes through the project's rasterizer (``perchead.render.render_features``): it composites RGB and a
one-hot class vector in one pass, so the segmentation is the exact per-pixel argmax of class weights
(background weight = 1 - alpha), consistent with the image by construction.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, Gaussians
from ..geometry.head_surface import EARS, NECK, HeadShape, _one_thread, head_points, head_surface_map
from ..render import render_features
from .format import (
    KINDS,
    SEG,
    SPLITS,
    SubjectRecord,
    ViewData,
    read_subject,
    write_index,
    write_subject,
)

Kind = Literal["studio", "wild", "mixed"]
Heads = Literal["asymmetric", "symmetric"]
# Bump when the same seed and settings would give different heads: reruns then redo old subjects. The
# asymmetric heads did not bump it: their subjects record heads="asymmetric" (checked on resume), and the
# symmetric ones are what version 1 always made.
GENERATOR_VERSION = 1
# subject_rng streams: 0 shape, appearance, lighting, cameras; 1 split; 2 kind; 3 the asymmetric features
# (a stream of their own, so drawing them changes none of the others).
ASYMMETRY_STREAM = 3
DEFAULT_KEY_LIGHT_YAW = (35.0, 80.0)  # what every asymmetric dataset used before the range was an option


@dataclass
class SynthConfig:
    subjects: int = 100
    views: int = 16  # per studio subject (wild subjects always have one)
    size: int = 256  # image width = height, pixels
    seed: int = 0
    kind: Kind = "studio"
    wild_fraction: float = 0.3  # share of wild subjects when kind = "mixed"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    surface_resolution: int = 128  # head_surface_map grid for the skin surfels (128 -> ~16k Gaussians)
    face_visible_max_yaw_deg: float = 90.0  # views with |yaw| up to this are flagged face_visible
    studio_pitch_deg: tuple[float, float] = (-15.0, 30.0)
    wild_yaw_deg: float = 30.0  # wild views: |yaw| up to this
    wild_pitch_deg: tuple[float, float] = (-10.0, 15.0)
    heads: Heads = "asymmetric"
    """asymmetric: one-sided hair, accessories, skin marks and studio light (see Asymmetry); symmetric: the
    left-right symmetric heads of the generator before asymmetry existed, identical bit for bit"""
    key_light_yaw_deg: tuple[float, float] = DEFAULT_KEY_LIGHT_YAW
    """range of |yaw| of the asymmetric studio heads' key light (0 = from the front, 180 = from behind). Up to
    80 the key lights the face's side and never the back, so every back is darker than the lit top of the
    head, and a network trained on them paints the back of a photo's head darker than the hair the photo
    shows (docs/results.md, "Light from behind"); up to 180 some heads are lit from behind instead"""

    def __post_init__(self) -> None:
        if self.subjects < 1 or self.views < 1 or self.size < 16:
            raise ValueError(f"need subjects >= 1, views >= 1 and size >= 16; got {self.subjects}, {self.views}, "
                             f"{self.size}")
        if self.kind not in ("studio", "wild", "mixed"):
            raise ValueError(f"kind must be studio, wild or mixed, got {self.kind!r}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {fr}")
        if not 0.0 <= self.wild_fraction <= 1.0:
            raise ValueError(f"wild_fraction must be in [0, 1], got {self.wild_fraction}")
        if self.heads not in ("asymmetric", "symmetric"):
            raise ValueError(f"heads must be 'asymmetric' or 'symmetric', got {self.heads!r}")
        lo, hi = self.key_light_yaw_deg
        if not 0.0 <= lo <= hi <= 180.0:
            raise ValueError(f"key_light_yaw_deg must be (low, high) with 0 <= low <= high <= 180, got "
                             f"{self.key_light_yaw_deg}")


# -- per-subject randomness ---------------------------------------------------------------------------------

def subject_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator for (seed, subject, stream): subject i never depends on how many there are."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def subject_split(cfg: SynthConfig, index: int) -> str:
    u = subject_rng(cfg.seed, index, stream=1).random()
    cum = np.cumsum(cfg.split_fractions)
    return SPLITS[int(np.searchsorted(cum, u, side="right").clip(0, 2))]


def subject_kind(cfg: SynthConfig, index: int) -> str:
    if cfg.kind != "mixed":
        return cfg.kind
    return "wild" if subject_rng(cfg.seed, index, stream=2).random() < cfg.wild_fraction else "studio"


def subject_id(index: int) -> str:
    return f"synth_{index:05d}"


def random_head_shape(rng: np.random.Generator) -> HeadShape:
    """Default proportions jittered per parameter, with one overall size factor for the big dimensions."""
    d = HeadShape()
    size = rng.normal(1.0, 0.035)
    rel = {  # relative standard deviation per parameter
        "width": 0.04, "depth_front": 0.04, "depth_back": 0.05, "crown_height": 0.04, "chin_drop": 0.05,
        "skull_base": 0.06, "occiput_bulge": 0.5, "jaw_width": 0.05, "chin_width": 0.15,
        "chin_protrusion": 0.35, "cheekbone": 0.3, "eye_spacing": 0.05, "eye_depth": 0.15, "eyeball": 0.1,
        "brow_ridge": 0.35, "nose_length": 0.1, "nose_width": 0.12, "nose_projection": 0.15,
        "mouth_width": 0.1, "lip_fullness": 0.25, "ear_height": 0.1, "ear_width": 0.1,
        "neck_radius_x": 0.08, "neck_radius_z": 0.07,
    }
    sized = {"width", "depth_front", "depth_back", "crown_height", "chin_drop", "skull_base", "ear_height",
             "ear_width", "neck_radius_x", "neck_radius_z"}
    values = {}
    for f in fields(d):
        v = getattr(d, f.name)
        if f.name in rel:
            v = v * float(np.clip(rng.normal(1.0, rel[f.name]), 1 - 2.5 * rel[f.name], 1 + 2.5 * rel[f.name]))
        if f.name in sized:
            v *= size
        values[f.name] = v
    values["squareness"] = float(rng.uniform(2.1, 2.8))
    values["forehead_slope"] = float(rng.uniform(0.0, 0.45))
    values["ear_protrusion_deg"] = float(rng.uniform(14.0, 32.0))
    values["mouth_height"] = d.mouth_height * float(rng.uniform(0.94, 1.06))
    values["jaw_drop"] = float(rng.uniform(0.14, 0.26))
    return HeadShape(**values)


@dataclass
class Appearance:
    """Everything random about a subject except its shape (kept in subject.json for reference)."""

    skin: tuple[float, float, float]
    lips: tuple[float, float, float]
    iris: tuple[float, float, float]
    hair: tuple[float, float, float]
    brow: tuple[float, float, float]
    bald: bool
    hairline: float  # front hairline height above the eyes (m)
    temple_recess: float
    nape: float  # y where the hair ends at the back of the neck
    hair_volume: float  # thickness of the hair shell (m)
    hair_length: float  # how far long hair hangs below the nape (m); 0 = short
    hair_wrap_deg: float  # how far long hair reaches round from the back towards the face
    bun: bool
    strand_freq: float
    strand_phase: float
    strand_contrast: float
    brow_thickness: float
    glasses: bool
    glasses_color: tuple[float, float, float]
    earrings: bool
    necklace: bool
    collar: bool
    cloth: tuple[float, float, float]


_SKIN_LIGHT = np.array([0.96, 0.80, 0.70])
_SKIN_DARK = np.array([0.30, 0.19, 0.13])
_HAIR_PALETTE = np.array([
    [0.05, 0.04, 0.035], [0.15, 0.09, 0.05], [0.32, 0.20, 0.11], [0.55, 0.38, 0.20], [0.80, 0.65, 0.40],
    [0.55, 0.22, 0.08], [0.62, 0.62, 0.62], [0.88, 0.87, 0.85], [0.25, 0.12, 0.35], [0.15, 0.30, 0.55],
])
_IRIS_PALETTE = np.array([[0.25, 0.14, 0.07], [0.12, 0.07, 0.04], [0.30, 0.45, 0.65], [0.35, 0.45, 0.25],
                          [0.45, 0.35, 0.20]])


def _tup(a) -> tuple[float, float, float]:
    return tuple(float(x) for x in np.clip(a, 0.0, 1.0))


def random_appearance(rng: np.random.Generator) -> Appearance:
    t = rng.beta(1.2, 1.4)
    skin = _SKIN_LIGHT * (1 - t) + _SKIN_DARK * t
    skin = skin * rng.normal(1.0, 0.03, 3)
    hair = _HAIR_PALETTE[rng.integers(len(_HAIR_PALETTE))] * rng.uniform(0.8, 1.2) + rng.normal(0, 0.03, 3)
    bald = bool(rng.random() < 0.07)
    length = 0.0 if rng.random() < 0.45 else float(rng.uniform(0.03, 0.28))
    return Appearance(
        skin=_tup(skin), lips=_tup(skin * np.array([0.92, 0.62, 0.62]) + rng.normal(0, 0.03, 3)),
        iris=_tup(_IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))] * rng.uniform(0.8, 1.2)),
        hair=_tup(hair), brow=_tup(np.minimum(hair, skin) * rng.uniform(0.5, 0.9)), bald=bald,
        hairline=float(rng.uniform(0.045, 0.08)), temple_recess=float(rng.uniform(0.0, 0.035)),
        nape=float(rng.uniform(-0.075, -0.03)), hair_volume=float(rng.uniform(0.003, 0.03)),
        hair_length=0.0 if bald else length, hair_wrap_deg=float(rng.uniform(95.0, 130.0)),
        bun=bool(not bald and rng.random() < 0.15), strand_freq=float(rng.uniform(20, 70)),
        strand_phase=float(rng.uniform(0, 2 * math.pi)), strand_contrast=float(rng.uniform(0.05, 0.25)),
        brow_thickness=float(rng.uniform(0.004, 0.0075)), glasses=bool(rng.random() < 0.25),
        glasses_color=_tup(rng.uniform(0.0, 0.6, 3) if rng.random() < 0.7 else rng.uniform(0.6, 0.9, 3)),
        earrings=bool(rng.random() < 0.15), necklace=bool(rng.random() < 0.1),
        collar=bool(rng.random() < 0.5), cloth=_tup(rng.uniform(0.05, 0.95, 3)),
    )


@dataclass
class Asymmetry:
    """The one-sided features of an asymmetric head (kept in subject.json). A side is +1 for the subject's
    left (+x) and -1 for the right; each feature's side is drawn at random per subject."""

    parting_side: int
    parting_x: float  # |x| of the parting line (m); hair parts there, from the hairline back to the crown
    fringe_low: float  # the side-swept fringe's lowest point above the eyes (m), on the side opposite the parting
    volume_bias: float  # extra hair-shell thickness on the fringe (heavy) side, as a fraction
    tucked_side: int  # hair tucked behind this ear; a lock of hair (or the long hair) covers the other
    lock_length: float  # how far the lock over the other ear hangs below the ear (m)
    earring: bool  # a single hoop earring, on the tucked (visible) ear
    earring_radius: float
    earring_color: tuple[float, float, float]
    marks_side: int  # moles and a freckle patch on this cheek
    moles: tuple[tuple[float, float, float], ...]  # (|x| beyond the eye, depth below the eyes, radius) (m)
    freckles: int  # number of freckles in the patch (0 = none)
    marks_seed: int  # where exactly the freckles fall
    light_side: int  # studio subjects: a key light from this side (wild ones keep their own random key)
    light_yaw_deg: float  # |yaw| of the key light
    light_elevation_deg: float
    light_strength: float


def random_asymmetry(rng: np.random.Generator,
                     key_light_yaw_deg: tuple[float, float] = DEFAULT_KEY_LIGHT_YAW) -> Asymmetry:
    """The one-sided features of a head, from their own generator (``subject_rng(..., ASYMMETRY_STREAM)``).

    Drawn without looking at the head (bald or not, wild or studio): a feature that does not apply (no hair
    to part, no studio light) is drawn all the same and left unused, so it shifts none of the others."""
    def side() -> int:
        return 1 if rng.random() < 0.5 else -1

    parting_side, tucked_side, marks_side, light_side = side(), side(), side(), side()
    moles = tuple((float(rng.uniform(0.0, 0.03)), float(rng.uniform(0.02, 0.055)), float(rng.uniform(0.0018, 0.0035)))
                  for _ in range(int(rng.integers(1, 4))))
    return Asymmetry(
        parting_side=parting_side, parting_x=float(rng.uniform(0.02, 0.04)),
        fringe_low=float(rng.uniform(0.02, 0.035)), volume_bias=float(rng.uniform(0.3, 0.7)),
        tucked_side=tucked_side, lock_length=float(rng.uniform(0.0, 0.04)),
        earring=bool(rng.random() < 0.6), earring_radius=float(rng.uniform(0.006, 0.011)),
        earring_color=_tup((0.85, 0.7, 0.3) if rng.random() < 0.6 else (0.8, 0.8, 0.82)),
        marks_side=marks_side, moles=moles, freckles=int(rng.integers(25, 60)) if rng.random() < 0.7 else 0,
        marks_seed=int(rng.integers(2**31)), light_side=light_side,
        light_yaw_deg=float(rng.uniform(*key_light_yaw_deg)),
        light_elevation_deg=float(rng.uniform(10, 40)), light_strength=float(rng.uniform(0.25, 0.4)),
    )


# -- Gaussian building blocks -------------------------------------------------------------------------------

def _quats_from_frames(t1: Tensor, t2: Tensor, n: Tensor) -> Tensor:
    """wxyz quaternions of rotations whose columns are (t1, t2, n) (orthonormal frames)."""
    m = torch.stack([t1, t2, n], -1)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    w = torch.sqrt((1 + m00 + m11 + m22).clamp_min(0)) / 2
    x = torch.sqrt((1 + m00 - m11 - m22).clamp_min(0)) / 2
    y = torch.sqrt((1 - m00 + m11 - m22).clamp_min(0)) / 2
    z = torch.sqrt((1 - m00 - m11 + m22).clamp_min(0)) / 2
    x = torch.copysign(x, m[..., 2, 1] - m[..., 1, 2])
    y = torch.copysign(y, m[..., 0, 2] - m[..., 2, 0])
    z = torch.copysign(z, m[..., 1, 0] - m[..., 0, 1])
    return torch.nn.functional.normalize(torch.stack([w, x, y, z], -1), dim=-1)


def _frames(n: Tensor, flow: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Tangents (t1, t2) of unit normals n; t1 follows ``flow`` projected onto the tangent plane if given."""
    if flow is None:
        flow = torch.tensor([0.0, 1.0, 0.0]).expand_as(n)
    t1 = flow - (flow * n).sum(-1, keepdim=True) * n
    alt = torch.linalg.cross(n, torch.tensor([1.0, 0.0, 0.0]).expand_as(n), dim=-1)
    t1 = torch.where(t1.norm(dim=-1, keepdim=True) < 1e-4, alt, t1)
    t1 = torch.nn.functional.normalize(t1, dim=-1)
    return t1, torch.linalg.cross(n, t1, dim=-1)


@dataclass
class _Parts:
    """Gaussians under construction, with one class label and one normal (for shading) each."""

    means: list[Tensor] = field(default_factory=list)
    scales: list[Tensor] = field(default_factory=list)
    quats: list[Tensor] = field(default_factory=list)
    opacity: list[Tensor] = field(default_factory=list)
    albedo: list[Tensor] = field(default_factory=list)
    normals: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)

    def add(self, means: Tensor, normals: Tensor, scale: Tensor, albedo: Tensor, label: Tensor | int,
            opacity: float = 0.98, flow: Tensor | None = None) -> None:
        n = len(means)
        if n == 0:
            return
        normals = torch.nn.functional.normalize(normals, dim=-1)
        t1, t2 = _frames(normals, flow)
        self.means.append(means)
        self.scales.append(scale.expand(n, 3) if scale.ndim < 2 or len(scale) == 1 else scale)
        self.quats.append(_quats_from_frames(t1, t2, normals))
        self.opacity.append(torch.full((n,), opacity))
        self.albedo.append(albedo.expand(n, 3))
        self.normals.append(normals)
        lab = torch.as_tensor(label, dtype=torch.int64)
        self.labels.append(lab.expand(n) if lab.ndim == 0 else lab)

    def cat(self) -> dict[str, Tensor]:
        return {k: torch.cat(getattr(self, k)) for k in ("means", "scales", "quats", "opacity", "albedo",
                                                          "normals", "labels")}


def _rgb(c) -> Tensor:
    return torch.tensor(c, dtype=torch.float32)


def _face_labels(p: Tensor, s: HeadShape, a: Appearance) -> tuple[Tensor, Tensor]:
    """Class labels and albedo of skin-surface points from their position (face features are painted)."""
    x, y, z = p.unbind(-1)
    ax = x.abs()
    front = z > 0.035
    labels = torch.full(x.shape, SEG["skin"], dtype=torch.int64)
    skin = _rgb(a.skin)
    # Cheeks a touch redder, nose a touch redder still.
    albedo = skin.expand(*x.shape, 3).clone()
    blush = torch.exp(-(((ax - s.eye_spacing - 0.01) / 0.02) ** 2 + ((y - s.eye_height + 0.035) / 0.018) ** 2))
    albedo = albedo * (1 - 0.08 * blush[..., None] * torch.tensor([0.0, 1.0, 1.0]))

    ey, ex = s.eye_height, s.eye_spacing
    tip = ey + 0.010 - s.nose_length
    t = ((ey + 0.004 - y) / (ey + 0.004 - tip)).clamp(0, 1)
    nose = front & (y < ey - 0.004) & (y > tip - 0.007) & (ax < 0.004 + s.nose_width * (0.35 + 0.75 * t))
    labels[nose] = SEG["nose"]
    albedo[nose] = albedo[nose] * torch.tensor([1.0, 0.93, 0.92])

    my, mw = s.mouth_height, s.mouth_width
    upper = front & (y >= my + 0.0006) & ((x / mw) ** 2 + ((y - my - 0.0025) / 0.0075) ** 2 < 1)
    lower = front & (y <= my - 0.0006) & ((x / (0.88 * mw)) ** 2 + ((y - my + 0.0035) / 0.0085) ** 2 < 1)
    mouth = front & ((y - my).abs() < 0.0006 + 0.0009 * (1 - (x / mw) ** 2).clamp_min(0)) & (ax < 0.97 * mw)
    labels[upper], labels[lower], labels[mouth] = SEG["u_lip"], SEG["l_lip"], SEG["mouth"]
    albedo[upper | lower] = _rgb(a.lips)
    albedo[mouth] = torch.tensor([0.25, 0.08, 0.08])

    bx = ax - ex + 0.002
    arch = ey + 0.016 + 0.004 * (1 - (bx / 0.022) ** 2)
    brow = front & (bx.abs() < 0.022) & (y > arch - a.brow_thickness / 2) & (y < arch + a.brow_thickness / 2)
    labels[brow] = torch.where(x[brow] > 0, SEG["l_brow"], SEG["r_brow"])
    albedo[brow] = _rgb(a.brow)

    r_eye = ((ax - ex) / 0.0125) ** 2 + ((y - ey) / (0.0058 * (1 - 0.35 * ((ax - ex) / 0.0125) ** 2))) ** 2
    eye = front & (r_eye < 1)
    labels[eye] = torch.where(x[eye] > 0, SEG["l_eye"], SEG["r_eye"])
    rr = torch.sqrt((ax - ex) ** 2 + (y - ey) ** 2)
    eye_col = torch.where((rr < 0.0024)[..., None], torch.tensor([0.02, 0.02, 0.02]),
                          torch.where((rr < 0.0058)[..., None], _rgb(a.iris).expand(*x.shape, 3),
                                      torch.tensor([0.93, 0.91, 0.88]).expand(*x.shape, 3)))
    albedo[eye] = eye_col[eye]
    return labels, albedo


def _hair_mask(p: Tensor, s: HeadShape, a: Appearance, asym: Asymmetry | None = None) -> Tensor:
    """Soft (0..1) coverage of the scalp by hair at skin points p: 1 well inside the hairline. With ``asym``
    the front hairline drops on the side opposite the parting: the side-swept fringe."""
    if a.bald:
        return torch.zeros(p.shape[:-1])
    x, y, z = p.unbind(-1)
    ang = torch.atan2(x, z)
    front_line = s.eye_height + a.hairline + a.temple_recess * (x / 0.05) ** 2 + 0.002 * torch.sin(ang * 9)
    if asym is not None:
        front_line = front_line - _fringe_drop(x, front_line, s, asym)
    # Hair comes down to the nape at the back; around the ears it stops just above them.
    frontness = ((z - s.ear_z - 0.015) / 0.05).clamp(0, 1)
    bottom = a.nape + (front_line - a.nape) * frontness
    near_ear = torch.exp(-(((z - s.ear_z) / (0.5 * s.ear_width + 0.006)) ** 2))
    ear_top = s.ear_y + 0.5 * s.ear_height + 0.004
    bottom = torch.maximum(bottom, ear_top * near_ear + (1 - near_ear) * bottom)
    return ((y - bottom) / 0.004).sigmoid()


def _fringe_drop(x: Tensor, front_line: Tensor, s: HeadShape, asym: Asymmetry) -> Tensor:
    """How far (m) the front hairline comes down at x: nothing at the parting, rising across the forehead to
    ``fringe_low`` above the eyes on the heavy side (x of the other sign), tapering off past the temple."""
    heavy = -asym.parting_side
    u = ((heavy * x + asym.parting_x) / (asym.parting_x + 0.05)).clamp(0, 1)
    rise = u * u * (3 - 2 * u)  # smoothstep: no kink where the fringe starts
    taper = ((0.085 - heavy * x) / 0.02).clamp(0, 1)  # back up towards the ear, so the cheek stays bare
    return (front_line - (s.eye_height + asym.fringe_low)).clamp_min(0) * rise * taper


def _parting(p: Tensor, s: HeadShape, a: Appearance, asym: Asymmetry) -> Tensor:
    """0..1: where the hair parts (a 2.5 mm line at x = parting_side x parting_x, from the front hairline
    over the top to just behind the crown); the scalp shows there."""
    x, y, z = p.unbind(-1)
    line = torch.exp(-(((x - asym.parting_side * asym.parting_x) / 0.0025) ** 2))
    top = ((y - (s.eye_height + a.hairline + 0.005)) / 0.004).sigmoid() * ((z - s.ear_z + 0.01) / 0.01).sigmoid()
    return line * top


def _strands(p: Tensor, a: Appearance) -> Tensor:
    """Brightness variation of hair along the head's circumference (strands and highlights)."""
    ang = torch.atan2(p[..., 0], p[..., 2])
    wave = torch.sin(ang * a.strand_freq + a.strand_phase) + 0.5 * torch.sin(ang * 2.3 * a.strand_freq)
    return 1.0 + a.strand_contrast * wave / 1.5


def _surface_spacing(xyz: Tensor) -> Tensor:
    """Local grid spacing [R, R] of a position map (clamped where the atlas seams make it meaningless)."""
    du = (xyz[:, 1:] - xyz[:, :-1]).norm(dim=-1)
    dv = (xyz[1:] - xyz[:-1]).norm(dim=-1)
    du = torch.cat([du, du[:, -1:]], 1)
    dv = torch.cat([dv, dv[-1:]], 0)
    sp = torch.maximum(du, dv)
    return sp.clamp(max=2.5 * sp.median())


def build_head(shape: HeadShape, app: Appearance, surface_resolution: int = 128,
               asym: Asymmetry | None = None) -> tuple[dict[str, Tensor], dict]:
    """Gaussians of one dressed head before lighting: dict of means, scales, quats, opacity, albedo, normals,
    labels (SEGMENT_CLASSES ids). ``asym``: add its one-sided features (None: the symmetric head, computed
    exactly as before they existed)."""
    parts = _Parts()
    hmap = head_surface_map(shape, surface_resolution)
    p, n, region = hmap.xyz.reshape(-1, 3), hmap.normals.reshape(-1, 3), hmap.region.reshape(-1)
    spacing = _surface_spacing(hmap.xyz).reshape(-1)
    labels, albedo = _face_labels(p, shape, app)
    labels[region == EARS] = torch.where(p[region == EARS, 0] > 0, SEG["l_ear"], SEG["r_ear"])
    neck = region == NECK
    labels[neck] = SEG["neck"]
    albedo[neck] *= 0.95
    if app.collar:
        collar = neck & (p[:, 1] < shape.neck_bottom + 0.045)
        labels[collar], albedo[collar] = SEG["cloth"], _rgb(app.cloth)
    head = ~(neck | (region == EARS))
    if asym is not None and asym.freckles:
        albedo = _freckle_tint(p, albedo, labels, shape, asym)
    hair_w = _hair_mask(p, shape, app, asym) * head
    hair_col = _rgb(app.hair) * _strands(p, app)[:, None]
    if asym is not None:
        # The parting shows the scalp: hair colour blended towards the skin along the line.
        part = _parting(p, shape, app, asym)
        hair_col = torch.lerp(hair_col, _rgb(app.skin).expand_as(hair_col) * 0.92, 0.85 * part[:, None])
    is_hair = hair_w > 0.5
    labels[is_hair] = SEG["hair"]
    albedo = torch.where(is_hair[:, None], hair_col, albedo)
    sigma = (0.6 * spacing)[:, None] * torch.tensor([1.0, 1.0, 0.15])
    parts.add(p, n, sigma, albedo, labels)

    # Fine surfels for the small features (eyes, brows, lips) so they read at full image resolution.
    step = 0.0009
    gx = torch.arange(-0.06, 0.06 + 1e-9, step)
    gy = torch.arange(shape.mouth_height - 0.02, shape.eye_height + 0.03, step)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    dirs = torch.stack([xx, yy, torch.full_like(xx, shape.depth_front)], -1).reshape(-1, 3)
    fp, fn = head_points(dirs, shape)
    fl, fa = _face_labels(fp, shape, app)
    keep = torch.isin(fl, torch.tensor([SEG[k] for k in ("l_eye", "r_eye", "l_brow", "r_brow", "u_lip",
                                                         "l_lip", "mouth")]))
    keep &= _hair_mask(fp, shape, app, asym) < 0.5
    parts.add(fp[keep] + 0.0003 * fn[keep], fn[keep], torch.tensor([[0.8 * step, 0.8 * step, 0.0002]]),
              fa[keep], fl[keep])

    if not app.bald:
        if asym is None:
            _add_hair_volume(parts, p[is_hair & head], n[is_hair & head], spacing[is_hair & head],
                             hair_w[is_hair & head], shape, app)
        else:
            # No shell over the parting (the scalp line shows through); the fringe lies flat on the forehead
            # (its shell only a fifth as thick) and the heavy side's hair is fuller.
            sel = is_hair & head & (part < 0.3)
            fringe = (hair_w - _hair_mask(p, shape, app) * head).clamp(0, 1)
            heavy = ((-asym.parting_side * p[:, 0]) / 0.02).sigmoid()
            scale = (1 + asym.volume_bias * heavy) * (1 - 0.8 * fringe)
            _add_hair_volume(parts, p[sel], n[sel], spacing[sel], hair_w[sel], shape, app, asym, scale[sel])
    if app.glasses:
        _add_glasses(parts, shape, app)
    if app.earrings:
        _add_earrings(parts, shape, app)
    if app.necklace:
        _add_necklace(parts, shape)
    if asym is not None:
        if not app.bald and app.hair_length == 0:
            _add_side_lock(parts, shape, app, asym)  # long hair already covers the untucked ear
        if asym.earring:
            _add_hoop(parts, shape, asym)
        _add_skin_marks(parts, shape, app, asym)
    out = parts.cat()
    return out, {"gaussians": len(out["means"])}


def _add_hair_volume(parts: _Parts, p: Tensor, n: Tensor, spacing: Tensor, w: Tensor, s: HeadShape,
                     a: Appearance, asym: Asymmetry | None = None, thick_scale: Tensor | None = None) -> None:
    down = torch.tensor([0.0, -1.0, -0.3])
    # Shell over the scalp, thinning to nothing at the hairline so there is no step at the forehead.
    thick = a.hair_volume * ((w - 0.5) / 0.5).clamp(0, 1) ** 0.5
    if thick_scale is not None:
        thick = thick * thick_scale
    layers = 1 + int(a.hair_volume > 0.01) + int(a.hair_volume > 0.02)
    for k in range(1, layers + 1):
        # Inner layers only fill the shell's side walls: every other point, a bit larger, is enough.
        sub = slice(None) if k == layers else slice(k % 2, None, 2)
        grow = 1.0 if k == layers else 1.4
        q = p[sub] + n[sub] * (thick[sub] * (k / layers))[:, None]
        col = _rgb(a.hair) * _strands(q, a)[:, None] * (0.85 + 0.15 * k / layers)
        sp = spacing[sub] * grow
        sc = torch.stack([1.6 * sp, 0.7 * sp, torch.full_like(sp, 0.0008)], -1)
        parts.add(q, n[sub], sc, col, SEG["hair"], flow=down.expand_as(q))

    if a.bun:
        rng = torch.Generator().manual_seed(int(a.strand_phase * 1e6))
        c = torch.tensor([0.0, 0.04, -s.depth_back - a.hair_volume - 0.012])
        d = torch.nn.functional.normalize(torch.randn(1500, 3, generator=rng), dim=-1)
        q = c + d * 0.028
        parts.add(q, d, torch.tensor([[0.004, 0.0025, 0.0008]]), _rgb(a.hair) * _strands(q, a)[:, None],
                  SEG["hair"], flow=torch.tensor([0.0, 1.0, 0.0]).expand_as(q))

    if a.hair_length > 0:
        # Long hair: a curtain hanging from the widest part of the head, round the back and the sides.
        wrap = math.radians(a.hair_wrap_deg)
        ry = torch.arange(0.01, -(0.10 + a.hair_length), -0.003)
        th = torch.arange(-wrap, wrap + 1e-9, 0.003 / 0.1)
        rx = s.width / 2 + a.hair_volume + 0.004
        rz = s.depth_back + a.hair_volume + 0.004
        if asym is not None:
            # Tucked behind one ear: on that side (th > 0 is +x) the curtain stops 4 mm behind the ear.
            behind = (0.3 * s.neck_z - (s.ear_z - 0.5 * s.ear_width - 0.004)) / rz
            tuck = math.acos(max(-1.0, min(1.0, behind)))
            th = th[(asym.tucked_side * th) <= min(tuck, wrap)]
        yy, tt = torch.meshgrid(ry, th, indexing="ij")
        # Hanging from the head's widest band, then falling straight down just outside it.
        x = rx * torch.sin(tt)
        z = -rz * torch.cos(tt) + 0.3 * s.neck_z
        ragged = 0.02 * torch.sin(tt * 17 + a.strand_phase) + 0.01 * torch.sin(tt * 41)
        keep = yy > -(0.10 + a.hair_length) + ragged
        q = torch.stack([x, yy, z], -1)[keep]
        nrm = torch.nn.functional.normalize(torch.stack([torch.sin(tt), torch.zeros_like(tt),
                                                         -torch.cos(tt)], -1)[keep], dim=-1)
        col = _rgb(a.hair) * _strands(q, a)[:, None]
        parts.add(q, nrm, torch.tensor([[0.0035, 0.0018, 0.0008]]), col, SEG["hair"],
                  flow=torch.tensor([0.0, 1.0, 0.0]).expand_as(q))


def _add_glasses(parts: _Parts, s: HeadShape, a: Appearance) -> None:
    ex, ey = s.eye_spacing, s.eye_height
    eye_p, _ = head_points(torch.tensor([[ex, ey, s.depth_front]]), s)
    zf = float(eye_p[0, 2]) + 0.016
    rx, ry = 0.024, 0.0165
    t = torch.linspace(0, 2 * math.pi, 160)[:-1]
    pts = []
    for side in (1.0, -1.0):
        pts.append(torch.stack([side * ex + rx * torch.cos(t), ey - 0.002 + ry * torch.sin(t),
                                torch.full_like(t, zf)], -1))
        hinge = torch.tensor([side * (ex + rx), ey + 0.004, zf])
        ear = torch.tensor([side * (s.width / 2 + 0.006), ey + 0.004, s.ear_z + 0.01])
        mid = torch.tensor([side * (s.width / 2 + 0.006), ey + 0.004, zf - 0.02])
        u = torch.linspace(0, 1, 40)[:, None]
        pts += [hinge + u * (mid - hinge), mid + u * (ear - mid)]
    u = torch.linspace(-1, 1, 20)[:, None]
    pts.append(torch.stack([u[:, 0] * (ex - rx), ey + 0.004 + 0.002 * (1 - u[:, 0] ** 2), torch.full((20,), zf)], -1))
    q = torch.cat(pts)
    parts.add(q, torch.tensor([0.0, 0.0, 1.0]).expand_as(q), torch.tensor([[0.0011, 0.0011, 0.0011]]),
              _rgb(a.glasses_color), SEG["eye_g"])


def _add_earrings(parts: _Parts, s: HeadShape, a: Appearance) -> None:
    for side in (1.0, -1.0):
        c = torch.tensor([side * (s.width / 2 + 0.008), s.ear_y - 0.5 * s.ear_height - 0.006, s.ear_z + 0.01])
        d = torch.nn.functional.normalize(torch.randn(60, 3, generator=torch.Generator().manual_seed(7)), dim=-1)
        parts.add(c + 0.0035 * d, d, torch.tensor([[0.0012, 0.0012, 0.0012]]), _rgb((0.85, 0.7, 0.3)),
                  SEG["ear_r"])


def _add_side_lock(parts: _Parts, s: HeadShape, a: Appearance, asym: Asymmetry) -> None:
    """A lock of short hair hanging over the ear on the side that is not tucked: a slightly bowed sheet from
    the hair above the ear to ``lock_length`` below it, just outside the ear, with a ragged lower edge."""
    side = -asym.tucked_side
    ear_top = s.ear_y + 0.5 * s.ear_height
    y_top = ear_top + 0.015
    y_bottom = s.ear_y - 0.5 * s.ear_height - asym.lock_length
    z0, z1 = s.ear_z - 0.5 * s.ear_width - 0.004, s.ear_z + 0.5 * s.ear_width + 0.008
    yy, zz = torch.meshgrid(torch.arange(y_top, y_bottom, -0.003), torch.arange(z0, z1 + 1e-9, 0.003),
                            indexing="ij")
    t = (zz - (z0 + z1) / 2) / ((z1 - z0) / 2)  # -1 (back) .. 1 (front) across the lock
    ragged = 0.006 * torch.sin(zz * 900 + a.strand_phase) + 0.004 * torch.sin(zz * 2300)
    keep = yy > y_bottom + 0.008 * t.abs() + ragged
    # Clear of the ear (which stands out up to ~2 cm at its back edge) below its top; above it the lock
    # bends in to the hair shell, so it hangs from the hair instead of floating beside the head.
    outside = 0.02 + 0.3 * a.hair_volume
    inward = ((yy - ear_top) / (y_top - ear_top)).clamp(0, 1)
    x = side * (s.width / 2 + outside - inward * (outside - 0.6 * a.hair_volume) + 0.006 * (1 - t**2))
    q = torch.stack([x, yy, zz], -1)[keep]
    nrm = torch.tensor([float(side), 0.0, 0.0]).expand_as(q)
    parts.add(q, nrm, torch.tensor([[0.0035, 0.0018, 0.0008]]), _rgb(a.hair) * _strands(q, a)[:, None], SEG["hair"],
              flow=torch.tensor([0.0, 1.0, 0.0]).expand_as(q))


def _add_hoop(parts: _Parts, s: HeadShape, asym: Asymmetry) -> None:
    """A single hoop earring hanging from the lobe of the tucked ear, in the plane of the ear."""
    side, r = asym.tucked_side, asym.earring_radius
    lobe = torch.tensor([side * (s.width / 2 + 0.009), s.ear_y - 0.5 * s.ear_height - 0.004, s.ear_z + 0.01])
    t = torch.linspace(0, 2 * math.pi, 121)[:-1]
    q = lobe + torch.stack([torch.zeros_like(t), -r * (1 - torch.cos(t)), r * torch.sin(t)], -1)
    parts.add(q, torch.tensor([float(side), 0.0, 0.0]).expand_as(q), torch.tensor([[0.0012, 0.0012, 0.0012]]),
              _rgb(asym.earring_color), SEG["ear_r"])


def _freckle_tint(p: Tensor, albedo: Tensor, labels: Tensor, s: HeadShape, asym: Asymmetry) -> Tensor:
    """The freckled cheek a little browner than the other (the spots themselves are _add_skin_marks')."""
    x, y, z = p.unbind(-1)
    cx, cy = asym.marks_side * (s.eye_spacing + 0.015), s.eye_height - 0.03
    patch = torch.exp(-(((x - cx) / 0.02) ** 2 + ((y - cy) / 0.015) ** 2)) * (z > 0.02) * (labels == SEG["skin"])
    return albedo * (1 - patch[:, None] * torch.tensor([0.06, 0.12, 0.16]))


def _add_skin_marks(parts: _Parts, s: HeadShape, a: Appearance, asym: Asymmetry) -> None:
    """Moles and a patch of freckles on one cheek: small flat discs just above the skin, where it is skin."""
    side = asym.marks_side
    gen = np.random.default_rng(asym.marks_seed)
    n = asym.freckles
    fx = side * (s.eye_spacing + 0.015) + gen.normal(0.0, 0.011, n)
    fy = s.eye_height - 0.03 + gen.normal(0.0, 0.008, n)
    fr = gen.uniform(0.0007, 0.0014, n)
    fc = np.array(a.skin) * np.array([0.72, 0.58, 0.48]) * gen.uniform(0.9, 1.05, (n, 1))
    mx = [side * (s.eye_spacing + 0.008 + dx) for dx, _, _ in asym.moles]
    my = [s.eye_height - dy for _, dy, _ in asym.moles]
    mr = [r for _, _, r in asym.moles]
    mc = np.array([[0.22, 0.13, 0.09]] * len(mr))
    x = torch.tensor(np.concatenate([fx, mx]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([fy, my]), dtype=torch.float32)
    radius = torch.tensor(np.concatenate([fr, mr]), dtype=torch.float32)
    colour = torch.tensor(np.concatenate([fc.reshape(-1, 3), mc]), dtype=torch.float32).clamp(0, 1)
    q, nrm = head_points(torch.stack([x, y, torch.full_like(x, s.depth_front)], -1), s)
    lab, _ = _face_labels(q, s, a)
    keep = (lab == SEG["skin"]) & (_hair_mask(q, s, a, asym) < 0.5)  # not on an eye, a lip or under the fringe
    sigma = torch.stack([radius, radius, torch.full_like(radius, 0.0002)], -1)
    parts.add(q[keep] + 0.0004 * nrm[keep], nrm[keep], sigma[keep], colour[keep], SEG["skin"])


def _add_necklace(parts: _Parts, s: HeadShape) -> None:
    t = torch.linspace(0, 2 * math.pi, 200)[:-1]
    y = -0.17 - 0.012 * torch.cos(t).clamp_min(0)
    q = torch.stack([(s.neck_radius_x + 0.004) * torch.sin(t), y,
                     s.neck_z + (s.neck_radius_z + 0.004) * torch.cos(t)], -1)
    nrm = torch.stack([torch.sin(t), torch.zeros_like(t), torch.cos(t)], -1)
    parts.add(q, nrm, torch.tensor([[0.0016, 0.0016, 0.0016]]), _rgb((0.8, 0.8, 0.78)), SEG["neck_l"])


# -- lighting, cameras, rendering ---------------------------------------------------------------------------

def shade(albedo: Tensor, normals: Tensor, kind: str, rng: np.random.Generator,
          asym: Asymmetry | None = None) -> tuple[Tensor, dict]:
    """Bake lighting into colours: even sky light for studio (with ``asym``: a dimmer sky plus a white key
    light from one side), a random coloured key + ambient for wild (already one-sided; ``asym`` does not
    change it, and never draws from ``rng``)."""
    up = normals[:, 1:2]
    if kind == "studio" and asym is not None:
        yaw = asym.light_side * asym.light_yaw_deg
        ly, le = math.radians(yaw), math.radians(asym.light_elevation_deg)
        ldir = torch.tensor([math.sin(ly) * math.cos(le), math.sin(le), math.cos(ly) * math.cos(le)])
        lam = (normals @ ldir).clamp_min(0)[:, None]
        # About as bright on average as the even light (0.82-1.0), but one side of the head in its shade.
        light = 0.66 + 0.14 * (0.5 + 0.5 * up) + asym.light_strength * lam
        return (albedo * light).clamp(0, 1), {"lighting": "even+key", "key_yaw_deg": yaw,
                                              "key_elevation_deg": asym.light_elevation_deg,
                                              "key_strength": asym.light_strength}
    if kind == "studio":
        return (albedo * (0.82 + 0.18 * (0.5 + 0.5 * up))).clamp(0, 1), {"lighting": "even"}
    yaw, elev = rng.uniform(-70, 70), rng.uniform(0, 55)
    ly = math.radians(yaw)
    le = math.radians(elev)
    ldir = torch.tensor([math.sin(ly) * math.cos(le), math.sin(le), math.cos(ly) * math.cos(le)])
    hue = rng.uniform(0, 1)
    tint = np.array([math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)]) * rng.uniform(0.0, 0.35) + 1
    amb_tint = np.array([math.cos(2 * math.pi * (hue + 0.5 + k / 3)) for k in range(3)]) * rng.uniform(0, 0.3) + 1
    key, amb = rng.uniform(0.55, 0.95), rng.uniform(0.25, 0.5)
    lam = (normals @ ldir).clamp_min(0)[:, None]
    light = amb * torch.tensor(amb_tint, dtype=torch.float32) + key * lam * torch.tensor(tint, dtype=torch.float32)
    info = {"lighting": "key+ambient", "key_yaw_deg": yaw, "key_elevation_deg": elev,
            "key_color": [float(v) for v in tint * key], "ambient_color": [float(v) for v in amb_tint * amb]}
    return (albedo * light).clamp(0, 1), info


def subject_cameras(cfg: SynthConfig, kind: str, rng: np.random.Generator) -> tuple[Cameras, Tensor, Tensor]:
    """Standard-radius cameras looking at the head centre: studio all around (view 0 near-frontal), wild one
    near-frontal view. Returns the cameras and each view's yaw and pitch in degrees."""
    if kind == "wild":
        yaw = np.array([rng.uniform(-cfg.wild_yaw_deg, cfg.wild_yaw_deg)])
        pitch = np.array([rng.uniform(*cfg.wild_pitch_deg)])
    else:
        v = cfg.views
        base = rng.uniform(-10, 10)
        yaw = base + np.arange(v) * 360.0 / v + rng.uniform(-0.3, 0.3, v) * 360.0 / v
        yaw[0] = base
        yaw = (yaw + 180.0) % 360.0 - 180.0
        pitch = rng.uniform(*cfg.studio_pitch_deg, v)
        pitch[0] = rng.uniform(-5, 10)
    yaw_t, pitch_t = torch.tensor(yaw, dtype=torch.float32), torch.tensor(pitch, dtype=torch.float32)
    return Cameras.orbit(yaw_t, pitch_t, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, cfg.size), yaw_t, pitch_t


@dataclass
class SynthRender:
    rgb: Tensor  # [C, H, W, 3] straight (not premultiplied) colour
    alpha: Tensor  # [C, H, W]
    segmentation: Tensor  # [C, H, W] int64 class ids


def render_with_labels(gaussians: Gaussians, labels: Tensor, cameras: Cameras) -> SynthRender:
    """RGB, alpha and the exact face-parsing map: one compositing pass carries RGB and one-hot classes."""
    # Only the classes this head uses get a channel (~14 of 19): compositing cost grows with channels.
    present, compact = torch.unique(labels, return_inverse=True)
    if int(present[0]) == SEG["background"]:
        raise ValueError("no Gaussian may carry the background class")
    feats = torch.cat([gaussians.rgb, torch.nn.functional.one_hot(compact, len(present)).float()], -1)
    with torch.no_grad():
        feat, alpha = render_features(gaussians, feats, cameras.viewmats, cameras.Ks, cameras.width, cameras.height,
                                      backend="cpu")
    alpha = alpha.squeeze(-1)
    best_w, best = feat[..., 3:].max(-1)
    # Argmax over the class weights, with the background's weight 1 - alpha (ties go to background).
    seg = torch.where(1.0 - alpha >= best_w, SEG["background"], present[best])
    rgb = feat[..., :3] / alpha.clamp_min(1e-6)[..., None]
    return SynthRender(rgb.clamp(0, 1), alpha, seg)


@dataclass
class SynthSubject:
    index: int
    id: str
    kind: str
    split: str
    shape: HeadShape
    appearance: Appearance
    gaussians: Gaussians  # lit colours baked in
    labels: Tensor  # [N] class ids
    cameras: Cameras
    yaw_deg: Tensor
    pitch_deg: Tensor
    lighting: dict
    asymmetry: Asymmetry | None = None  # None: a symmetric head


def make_subject(cfg: SynthConfig, index: int) -> SynthSubject:
    """Subject ``index`` of the dataset ``cfg`` describes (independent of ``cfg.subjects``)."""
    with _one_thread():
        kind = subject_kind(cfg, index)
        rng = subject_rng(cfg.seed, index)
        shape = random_head_shape(rng)
        app = random_appearance(rng)
        asym = (random_asymmetry(subject_rng(cfg.seed, index, stream=ASYMMETRY_STREAM), cfg.key_light_yaw_deg)
                if cfg.heads == "asymmetric" else None)
        g, _ = build_head(shape, app, cfg.surface_resolution, asym)
        rgb, lighting = shade(g["albedo"], g["normals"], kind, rng, asym)
        gaussians = Gaussians.from_activated(g["means"], g["scales"].clamp_min(1e-5), g["quats"], g["opacity"], rgb)
        cams, yaw, pitch = subject_cameras(cfg, kind, rng)
    return SynthSubject(index, subject_id(index), kind, subject_split(cfg, index), shape, app, gaussians,
                        g["labels"], cams, yaw, pitch, lighting, asym)


def _subject_meta(cfg: SynthConfig, subj: SynthSubject) -> dict:
    meta = {"source": "perchead-synth", "generator_version": GENERATOR_VERSION, "seed": cfg.seed,
            "index": subj.index, "size": cfg.size, "views": len(subj.cameras),
            "surface_resolution": cfg.surface_resolution, "head_shape": asdict(subj.shape),
            "appearance": asdict(subj.appearance), "lighting": subj.lighting}
    # Symmetric subjects get no new keys: their subject.json stays byte for byte what it was before the
    # asymmetric heads (a missing "heads" reads as symmetric, see _finished).
    if subj.asymmetry is not None:
        meta["heads"] = "asymmetric"
        meta["asymmetry"] = asdict(subj.asymmetry)
        if tuple(cfg.key_light_yaw_deg) != DEFAULT_KEY_LIGHT_YAW:  # older datasets stay byte for byte
            meta["key_light_yaw_deg"] = list(cfg.key_light_yaw_deg)
    return meta


def write_synth_subject(cfg: SynthConfig, subj: SynthSubject, folder: Path) -> SubjectRecord:
    with _one_thread():
        r = render_with_labels(subj.gaussians, subj.labels, subj.cameras)
    rgba = torch.cat([r.rgb, r.alpha[..., None]], -1).mul(255).round().to(torch.uint8).numpy()
    seg = r.segmentation.to(torch.uint8).numpy()
    views = []
    for c in range(len(subj.cameras)):
        yaw = float(subj.yaw_deg[c])
        views.append(ViewData(
            name=f"{c:02d}", K=subj.cameras.Ks[c], world_to_cam=subj.cameras.viewmats[c], rgba=rgba[c],
            segmentation=seg[c],
            extra={"yaw_deg": round(yaw, 4), "pitch_deg": round(float(subj.pitch_deg[c]), 4),
                   "face_visible": abs(yaw) <= cfg.face_visible_max_yaw_deg}))
    return write_subject(folder, subj.id, subj.kind, subj.split, views, _subject_meta(cfg, subj))


def _finished(cfg: SynthConfig, folder: Path, index: int) -> SubjectRecord | None:
    """The existing subject if a previous run wrote it completely with the same settings."""
    try:
        rec = read_subject(folder)
    except (ValueError, OSError):
        return None
    m = rec.meta
    same = (m.get("generator_version") == GENERATOR_VERSION and m.get("seed") == cfg.seed
            and m.get("index") == index and m.get("size") == cfg.size
            and m.get("surface_resolution") == cfg.surface_resolution
            and m.get("heads", "symmetric") == cfg.heads
            and (cfg.heads == "symmetric"
                 or tuple(m.get("key_light_yaw_deg", DEFAULT_KEY_LIGHT_YAW)) == tuple(cfg.key_light_yaw_deg))
            and rec.kind == subject_kind(cfg, index) and (rec.kind == "wild" or len(rec.views) == cfg.views))
    return rec if same else None


@dataclass
class SynthReport:
    out: Path
    written: int
    skipped: int
    seconds: float
    splits: dict[str, int]
    kinds: dict[str, int]


def generate(cfg: SynthConfig, out: str | Path, progress: bool = True) -> SynthReport:
    """Write ``cfg.subjects`` synthetic subjects and the index to ``out``; finished subjects are skipped."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, written, skipped = [], 0, 0
    for i in tqdm(range(cfg.subjects), desc="synth heads", unit="subject", disable=not progress):
        folder = out / "subjects" / subject_id(i)
        rec = _finished(cfg, folder, i)
        if rec is None:
            rec = write_synth_subject(cfg, make_subject(cfg, i), folder)
            written += 1
        else:
            skipped += 1
        records.append(rec)
    config = asdict(cfg)
    if cfg.heads == "symmetric":
        del config["heads"]  # the index of a symmetric dataset is the one the generator wrote before "heads"
    if cfg.heads == "symmetric" or tuple(cfg.key_light_yaw_deg) == DEFAULT_KEY_LIGHT_YAW:
        del config["key_light_yaw_deg"]  # nor does an index of the default light gain a key
    meta = {"source": "perchead-synth", "generator_version": GENERATOR_VERSION, "config": config}
    write_index(out, records, meta)
    count = {s: sum(r.split == s for r in records) for s in SPLITS}
    kinds = {k: sum(r.kind == k for r in records) for k in KINDS}
    return SynthReport(out, written, skipped, time.perf_counter() - t0, count, kinds)

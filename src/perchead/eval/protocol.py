"""The evaluation protocol: which view is the input, which are the targets, and how targets are framed.

Views are described by yaw and pitch in the canonical head frame (docs/design.md section 3: +y up, face towards
+z; yaw 0 = camera in front on +z, positive yaw moves the camera towards +x, the subject's left ear; positive
pitch lifts it above the head). Three tasks (docs/evaluation.md):

* ``novel`` (the paper's): the input is the view closest to frontal; the targets are the other views, spread
  around the head (all of them, or a farthest-point subset).
* ``extreme`` (the paper's): the input is the view closest to frontal, within ``extreme_input_max_deg`` (30)
  of it; the targets are the horizontal profiles (``75 <= |yaw| <= 105``, ``|pitch| <= 20``: pair setting
  ``extreme``) and, as a separate group, the back (``|yaw| >= 150``: setting ``extreme_back``).
* ``opposite_profile`` (this project's former "extreme"): the input is near one profile (``profile_min_deg
  <= |yaw| <= profile_max_deg``), the target the opposite profile (yaw of the other sign); both directions.
  Where the rig has views above and below the head (``|pitch| >= pitch_extreme_deg``), above -> below and
  below -> above pairs too. On a left-right symmetric head the mirrored input *is* the target, so this task
  rewards mirroring; it is kept to compare with the older tables.

Every pair has a ``setting``; :func:`task_group` maps it to the group a table reports it in (``novel``,
``extreme``, ``extreme_back``, ``opposite_profile``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..data.readers.ava256 import AVA256_TEST_IDS
from ..data.readers.common import yaw_pitch_of
from ..data.readers.nersemble import NERSEMBLE_TEST_IDS
from ..geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS
from ..preprocess.crop import PAPER_CROP_SCALE, Box, square_box

# The paper's held-out subjects (docs/design.md section 2, eval row). NeRSemble participant ids are published;
# the 11 unseen Ava-256 captures are not (neither in the paper nor in the Ava-256 repository), so the list
# is empty and ProtocolConfig.ava256_subjects must be given to evaluate on Ava-256.
NERSEMBLE_HELD_OUT: tuple[str, ...] = NERSEMBLE_TEST_IDS
AVA256_HELD_OUT: tuple[str, ...] = AVA256_TEST_IDS
AVA256_HELD_OUT_COUNT = 11
# How the dataset converters (perchead.data.readers) name subjects in the on-disk format.
SUBJECT_PREFIX = {"nersemble": "nersemble_", "ava256": "ava_"}

BACKGROUND = (1.0, 1.0, 1.0)  # white, as in the paper; renders and targets are composited on it

Setting = Literal["novel", "extreme", "opposite_profile"]
TASKS: tuple[str, ...] = ("novel", "extreme", "opposite_profile")
# The groups of every results table, in order: extreme_back is the extreme task's second column.
GROUPS: tuple[str, ...] = ("novel", "extreme", "extreme_back", "opposite_profile")
OPPOSITE_PREFIX = "opposite_profile_"  # + left_to_right, right_to_left, above_to_below, below_to_above


# ------------------------------------------------------------------------------------------------ views
@dataclass(frozen=True)
class View:
    """One camera of a subject, by name, with its direction around the head in degrees."""

    name: str
    yaw_deg: float
    pitch_deg: float

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from the head centre towards the camera (as in geometry.orbit_position)."""
        y, p = math.radians(self.yaw_deg), math.radians(self.pitch_deg)
        return np.array([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])


def angle_between(a: View, b: View) -> float:
    """Great-circle angle in degrees between two view directions."""
    return math.degrees(math.acos(float(np.clip(a.direction @ b.direction, -1.0, 1.0))))


def views_from_cameras(names: Sequence[str], world_to_cam: torch.Tensor | np.ndarray,
                       head_center: Sequence[float] = (0.0, 0.0, 0.0)) -> list[View]:
    """Views from world-to-camera matrices ``[C, 4, 4]`` (OpenCV axes) in the canonical head frame.

    Yaw and pitch are those of the camera centre seen from ``head_center`` (the canonical origin by default,
    which the dataset converters put at the head centre).
    """
    mats = np.asarray(world_to_cam.detach().cpu() if isinstance(world_to_cam, torch.Tensor) else world_to_cam,
                      dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1:] != (4, 4):
        raise ValueError(f"world_to_cam must be [C,4,4], got {mats.shape}")
    if len(names) != len(mats):
        raise ValueError(f"{len(names)} view names for {len(mats)} cameras")
    shifted = mats.copy()
    # Moving the world origin to head_center: x_cam = R (x_world' + c) + t, so t' = t + R c.
    shifted[:, :3, 3] += mats[:, :3, :3] @ np.asarray(head_center, dtype=np.float64)
    return [View(str(n), *yaw_pitch_of(m)) for n, m in zip(names, shifted, strict=True)]


def _check_views(views: Sequence[View]) -> list[View]:
    views = list(views)
    if len(views) < 2:
        raise ValueError(f"a subject needs at least 2 views (an input and a target), got {len(views)}")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError("view names must be unique within a subject")
    return views


# ------------------------------------------------------------------------------------------------ pairs
@dataclass
class ProtocolConfig:
    """The view-selection and framing rules (printed with every result)."""

    frontal_max_deg: float = 25.0
    """the novel-view input must be within this angle of the frontal direction (yaw 0, pitch 0)"""
    novel_targets: int | None = None
    """how many novel-view targets (farthest-point spread around the head); None: every other view"""
    extreme_input_max_deg: float = 30.0
    """extreme task: the input (the view closest to frontal) must be within this angle of frontal"""
    extreme_profile_min_deg: float = 75.0
    """extreme task: |yaw| range of the profile targets"""
    extreme_profile_max_deg: float = 105.0
    extreme_max_pitch_deg: float = 20.0
    """extreme task: |pitch| of the profile and back targets at most this (horizontal views, not from above)"""
    extreme_back_min_deg: float = 150.0
    """extreme task: |yaw| of the back targets at least this (the separate extreme_back group)"""
    profile_min_deg: float = 60.0
    """opposite_profile task: |yaw| range of a profile view"""
    profile_max_deg: float = 90.0
    profile_max_pitch_deg: float = 30.0
    """opposite_profile left/right views: |pitch| at most this (a profile, not a view from above)"""
    pitch_extreme_deg: float = 30.0
    """opposite_profile above/below pairs use views with |pitch| at least this, where a dataset has them"""
    opposite_targets: Literal["mirror", "all"] = "mirror"
    """opposite_profile task: mirror = the one opposite profile closest to the input's mirror image; all =
    every opposite profile"""
    crop: str = "panohead"
    """target framing: 'panohead' or 'full' (see CROP_CONVENTIONS)"""
    crop_scale: float = PAPER_CROP_SCALE
    """panohead crop side / head height"""
    nersemble_subjects: tuple[str, ...] = NERSEMBLE_HELD_OUT
    ava256_subjects: tuple[str, ...] = AVA256_HELD_OUT
    """the paper's 11 unseen Ava-256 captures are not published: give the capture ids here"""
    background: tuple[float, float, float] = BACKGROUND

    def __post_init__(self) -> None:
        if not 0.0 <= self.profile_min_deg < self.profile_max_deg <= 180.0:
            raise ValueError("need 0 <= profile_min_deg < profile_max_deg <= 180")
        if not 0.0 <= self.extreme_profile_min_deg < self.extreme_profile_max_deg <= 180.0:
            raise ValueError("need 0 <= extreme_profile_min_deg < extreme_profile_max_deg <= 180")
        if not 0.0 <= self.extreme_back_min_deg <= 180.0:
            raise ValueError(f"extreme_back_min_deg must be in [0, 180], got {self.extreme_back_min_deg}")
        if self.extreme_back_min_deg < self.extreme_profile_max_deg:
            raise ValueError(f"extreme_back_min_deg ({self.extreme_back_min_deg}) must not be below "
                             f"extreme_profile_max_deg ({self.extreme_profile_max_deg}): a view would be both a "
                             "profile and the back")
        for name in ("extreme_input_max_deg", "extreme_max_pitch_deg"):
            if not 0.0 <= getattr(self, name) <= 90.0:
                raise ValueError(f"{name} must be in [0, 90], got {getattr(self, name)}")
        if self.crop not in CROP_CONVENTIONS:
            raise ValueError(f"unknown crop convention {self.crop!r}; "
                             f"choose from {', '.join(CROP_CONVENTIONS)}")
        if self.opposite_targets not in ("mirror", "all"):
            raise ValueError(f"opposite_targets must be 'mirror' or 'all', got {self.opposite_targets!r}")
        if self.novel_targets is not None and self.novel_targets < 1:
            raise ValueError("novel_targets must be at least 1 (or None for every other view)")


@dataclass(frozen=True)
class ViewPair:
    """One evaluation sample of a subject: render ``targets`` from the reconstruction of ``input``."""

    setting: str  # "novel", "extreme", "extreme_back", "opposite_profile_left_to_right", ... (see task_group)
    input: View
    targets: tuple[View, ...]


FRONTAL = View("frontal", 0.0, 0.0)
_EPS = 1e-3  # degrees: angles recovered from float32 camera matrices miss round limits like 90 by ~1e-5


def novel_view_pairs(views: Sequence[View], config: ProtocolConfig | None = None) -> list[ViewPair]:
    """The novel-view sample: the view closest to frontal as input, the others spread around as targets.

    Returns [] when no view lies within ``frontal_max_deg`` of frontal (the subject cannot be evaluated).
    """
    cfg = config or ProtocolConfig()
    views = _check_views(views)
    inp = min(views, key=lambda v: angle_between(v, FRONTAL))
    if angle_between(inp, FRONTAL) > cfg.frontal_max_deg:
        return []
    others = [v for v in views if v.name != inp.name]
    if cfg.novel_targets is not None and cfg.novel_targets < len(others):
        others = _farthest_points(others, cfg.novel_targets, start=inp)
    others.sort(key=lambda v: (v.yaw_deg, v.pitch_deg))
    return [ViewPair("novel", inp, tuple(others))]


def _farthest_points(candidates: list[View], k: int, start: View) -> list[View]:
    """Greedy farthest-point subset: each pick is the view farthest from the input and the views picked."""
    chosen: list[View] = []
    anchors = [start]
    pool = list(candidates)
    for _ in range(k):
        best = max(pool, key=lambda v: (min(angle_between(v, a) for a in anchors), -abs(v.pitch_deg), v.name))
        chosen.append(best)
        anchors.append(best)
        pool.remove(best)
    return chosen


def _mirror_targets(candidates: list[View], mirror: View, mode: str) -> tuple[View, ...]:
    ranked = sorted(candidates, key=lambda v: (angle_between(v, mirror), v.name))
    return tuple(ranked[:1] if mode == "mirror" else ranked)


def extreme_view_pairs(views: Sequence[View], config: ProtocolConfig | None = None) -> list[ViewPair]:
    """The paper's extreme views: a (near-)frontal input, the horizontal profiles and the back as targets.

    The input is the view closest to frontal (the novel task's input), if it lies within
    ``extreme_input_max_deg`` of frontal; one input per subject, like the novel task, so that the two tasks
    score the same reconstruction. Targets, every view in range (not a subset):

    * setting ``extreme``: ``extreme_profile_min_deg <= |yaw| <= extreme_profile_max_deg`` (75-105), both
      sides;
    * setting ``extreme_back`` (its own group): ``|yaw| >= extreme_back_min_deg`` (150);

    both with ``|pitch| <= extreme_max_pitch_deg`` (20: horizontal views, not from above or below). A range
    without a view gives no pair; no frontal input gives [].
    """
    cfg = config or ProtocolConfig()
    views = _check_views(views)
    inp = min(views, key=lambda v: angle_between(v, FRONTAL))  # the same choice as novel_view_pairs
    if angle_between(inp, FRONTAL) > cfg.extreme_input_max_deg + _EPS:
        return []
    level = [v for v in views if v.name != inp.name and abs(v.pitch_deg) <= cfg.extreme_max_pitch_deg + _EPS]
    lo, hi = cfg.extreme_profile_min_deg - _EPS, cfg.extreme_profile_max_deg + _EPS
    ranges = (("extreme", [v for v in level if lo <= abs(v.yaw_deg) <= hi]),
              ("extreme_back", [v for v in level if abs(v.yaw_deg) >= cfg.extreme_back_min_deg - _EPS]))
    return [ViewPair(name, inp, tuple(sorted(targets, key=lambda v: (v.yaw_deg, v.pitch_deg, v.name))))
            for name, targets in ranges if targets]


def opposite_profile_pairs(views: Sequence[View], config: ProtocolConfig | None = None) -> list[ViewPair]:
    """Profile -> opposite-profile pairs (both directions), plus above <-> below where the rig has them.

    This project's "extreme" setting before the paper's was implemented (the old tables, docs/results.md).
    The input of a left/right pair is the most sideways profile view of that side (largest |yaw| inside
    ``[profile_min_deg, profile_max_deg]``, then the smallest |pitch|); targets are profile views of the other
    side, closest first to the input's mirror image (yaw -> -yaw). A side without a profile view gives no
    pair: rigs that only cover the front (NeRSemble spans about +-45 degrees) have no such pairs unless
    the profile range is lowered. Settings: ``opposite_profile_left_to_right``, ``..._right_to_left``,
    ``..._above_to_below``, ``..._below_to_above``.
    """
    cfg = config or ProtocolConfig()
    views = _check_views(views)

    def profiles(sign: int) -> list[View]:
        lo, hi = cfg.profile_min_deg - _EPS, cfg.profile_max_deg + _EPS
        return [v for v in views
                if lo <= sign * v.yaw_deg <= hi and abs(v.pitch_deg) <= cfg.profile_max_pitch_deg + _EPS]

    pairs = []
    for sign, name in ((1, "left_to_right"), (-1, "right_to_left")):
        sources, sinks = profiles(sign), profiles(-sign)
        if not sources or not sinks:
            continue
        inp = max(sources, key=lambda v: (sign * v.yaw_deg, -abs(v.pitch_deg), v.name))
        mirror = View("mirror", -inp.yaw_deg, inp.pitch_deg)
        pairs.append(ViewPair(OPPOSITE_PREFIX + name, inp, _mirror_targets(sinks, mirror, cfg.opposite_targets)))
    above = [v for v in views if v.pitch_deg >= cfg.pitch_extreme_deg - _EPS]
    below = [v for v in views if v.pitch_deg <= -cfg.pitch_extreme_deg + _EPS]
    if above and below:
        for sources, sinks, name in ((above, below, "above_to_below"), (below, above, "below_to_above")):
            # the most frontal of the steepest views: a view from above the face, not from above the neck
            inp = max(sources, key=lambda v: (abs(v.pitch_deg), -abs(v.yaw_deg), v.name))
            mirror = View("mirror", inp.yaw_deg, -inp.pitch_deg)
            pairs.append(ViewPair(OPPOSITE_PREFIX + name, inp,
                                  _mirror_targets(sinks, mirror, cfg.opposite_targets)))
    return pairs


def task_group(setting: str) -> str:
    """The table group of a pair's ``setting``: novel, extreme, extreme_back or opposite_profile."""
    if setting in ("novel", "extreme", "extreme_back"):
        return setting
    if setting.startswith(OPPOSITE_PREFIX):
        return "opposite_profile"
    raise ValueError(f"unknown pair setting {setting!r}")


def view_pairs(views: Sequence[View], setting: Setting,
               config: ProtocolConfig | None = None) -> list[ViewPair]:
    """The samples of one subject for the task ``setting`` ("novel", "extreme" or "opposite_profile")."""
    if setting == "novel":
        return novel_view_pairs(views, config)
    if setting == "extreme":
        return extreme_view_pairs(views, config)
    if setting == "opposite_profile":
        return opposite_profile_pairs(views, config)
    raise ValueError(f"unknown evaluation task {setting!r}; choose from {', '.join(TASKS)}")


# ------------------------------------------------------------------------------------------ held-out ids
def held_out_subjects(dataset: Literal["nersemble", "ava256"], config: ProtocolConfig | None = None,
                      prefixed: bool = False) -> tuple[str, ...]:
    """The paper's held-out subjects of ``dataset``; ``prefixed`` gives the converted dataset's subject ids.

    Raises ValueError for Ava-256 while ``config.ava256_subjects`` is empty (the paper's list is unpublished).
    """
    cfg = config or ProtocolConfig()
    if dataset == "nersemble":
        ids = cfg.nersemble_subjects
    elif dataset == "ava256":
        ids = cfg.ava256_subjects
        if not ids:
            raise ValueError(
                f"the paper evaluates on {AVA256_HELD_OUT_COUNT} unseen Ava-256 captures but does not list "
                "them; give their capture ids in ProtocolConfig.ava256_subjects (the folder names the "
                "Ava-256 converter used, without the 'ava_' prefix)"
            )
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose 'nersemble' or 'ava256'")
    return tuple(SUBJECT_PREFIX[dataset] + i for i in ids) if prefixed else tuple(ids)


# ------------------------------------------------------------------------------------------------ crops
# The world extent the project's standard input camera frames at the head centre: 2 R tan(fov / 2) = 0.395 m,
# i.e. a 0.24 m head at the paper's 1.65 crop scale.
INPUT_FRAME_M = 2.0 * HEAD_CAMERA_RADIUS * math.tan(math.radians(HEAD_CAMERA_FOV_DEG) / 2.0)
HEAD_HEIGHT_M = INPUT_FRAME_M / PAPER_CROP_SCALE

CROP_CONVENTIONS = {
    "panohead": "square centred on the projected head centre, side = crop_scale x head height (0.24 m) at "
                "the head centre's depth: the head has the same size and place in every view, front or back",
    "full": "the largest centred square of the captured image, as the camera saw it",
}


@dataclass(frozen=True)
class TargetCrop:
    """Where to cut a target image, and the intrinsics to render the same framing at ``size`` pixels."""

    box: Box  # (x0, y0, x1, y1) in the captured image's pixels; may extend past it (pad with white)
    K: torch.Tensor  # [3, 3] intrinsics of the cropped, resized image
    size: int


def target_crop(K: torch.Tensor, world_to_cam: torch.Tensor, width: int, height: int, size: int,
                config: ProtocolConfig | None = None,
                head_center: Sequence[float] = (0.0, 0.0, 0.0)) -> TargetCrop:
    """The crop of one target view under ``config.crop``, and the camera that renders exactly that crop."""
    cfg = config or ProtocolConfig()
    K = torch.as_tensor(K, dtype=torch.float64)
    w2c = torch.as_tensor(world_to_cam, dtype=torch.float64)
    if cfg.crop == "full":
        side = float(min(width, height))
        box = square_box(np.array([width / 2.0, height / 2.0]), side)
    elif cfg.crop == "panohead":
        centre_cam = w2c[:3, :3] @ torch.tensor(head_center, dtype=torch.float64) + w2c[:3, 3]
        depth = float(centre_cam[2])
        if depth <= 0:
            raise ValueError("the head centre is behind this camera; cannot build a head-centred crop")
        uv = (K @ (centre_cam / depth))[:2].numpy()
        side = cfg.crop_scale * HEAD_HEIGHT_M * float(K[0, 0] + K[1, 1]) / 2.0 / depth
        box = square_box(uv, side)
    else:
        raise ValueError(f"unknown crop convention {cfg.crop!r}; choose from {', '.join(CROP_CONVENTIONS)}")
    s = size / (box[2] - box[0])
    K_new = K.clone()
    K_new[0, :] *= s
    K_new[1, :] *= s
    K_new[0, 2] = (K[0, 2] - box[0]) * s
    K_new[1, 2] = (K[1, 2] - box[1]) * s
    return TargetCrop(box, K_new.float(), size)


def describe_protocol(config: ProtocolConfig | None = None) -> dict[str, object]:
    """The protocol in words, for printing next to a results table."""
    c = config or ProtocolConfig()
    targets = "every other view" if c.novel_targets is None else f"{c.novel_targets} farthest-point views"
    return {"novel": f"input = view closest to frontal (<= {c.frontal_max_deg} deg), targets = {targets}",
            "extreme": f"input = view closest to frontal (<= {c.extreme_input_max_deg} deg), targets = every "
                       f"profile ({c.extreme_profile_min_deg}-{c.extreme_profile_max_deg} deg |yaw|, |pitch| <= "
                       f"{c.extreme_max_pitch_deg}); extreme_back: the same input, targets = every view with "
                       f"|yaw| >= {c.extreme_back_min_deg}, |pitch| <= {c.extreme_max_pitch_deg}",
            "opposite_profile": f"input = most sideways profile ({c.profile_min_deg}-{c.profile_max_deg} deg "
                                f"|yaw|, |pitch| <= {c.profile_max_pitch_deg}), target = opposite profile "
                                f"({c.opposite_targets}); above<->below at |pitch| >= {c.pitch_extreme_deg} deg "
                                "where present",
            "crop": f"{c.crop}: {CROP_CONVENTIONS[c.crop]}", "crop_scale": c.crop_scale,
            "background": c.background}

"""What every converter shares: the rig -> canonical head frame transform, resizing, and batch conversion
that collects bad files instead of stopping.

Real captures come in their own world frame and units. :func:`canonical_rig` maps them to the canonical head
frame (metres, origin at the head centre, +y up, face towards +z):

* units: world units are multiplied by ``metres_per_unit`` (Ava-256: 0.001, its calibration is in mm);
* origin: a given head centre (e.g. Ava-256's tracked head pose), else the point closest to every camera's
  optical axis (studio rigs aim all cameras at the head);
* axes (``align=True``): up = the mean of the cameras' up directions, front = from the head towards the mean
  camera position (rigs surround the face, not the back of the head), made orthogonal to up.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..format import DatasetFormatError, SubjectRecord, ViewData, write_index, write_subject

# Errors one bad file or folder can raise; converters catch exactly these per item and go on.
ITEM_ERRORS = (DatasetFormatError, OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError)


@dataclass
class ConversionReport:
    out: Path
    converted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (subject or source, message)
    skipped_views: list[tuple[str, str]] = field(default_factory=list)  # (subject/view, message)

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} subject(s) into {self.out}"]
        if self.skipped_views:
            lines.append(f"skipped {len(self.skipped_views)} view(s):")
            lines += [f"  {item}: {msg}" for item, msg in self.skipped_views]
        if self.failed:
            lines.append(f"failed {len(self.failed)} subject(s):")
            lines += [f"  {item}: {msg}" for item, msg in self.failed]
        return "\n".join(lines)


@dataclass
class SubjectData:
    """A converter's output for one subject, ready to write."""

    id: str
    kind: str
    split: str
    views: list[ViewData]
    meta: dict = field(default_factory=dict)


def look_at_center(world_to_cam: np.ndarray) -> np.ndarray:
    """Least-squares point closest to all cameras' optical axes (the point a studio rig aims at)."""
    rot, t = world_to_cam[:, :3, :3], world_to_cam[:, :3, 3]
    centres = -np.einsum("cji,cj->ci", rot, t)
    dirs = rot[:, 2, :]  # camera +z in world coordinates
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, dirs, strict=True):
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ c
    if np.linalg.cond(a) > 1e8:
        raise ValueError("cameras do not converge on a point (all parallel?); give the head centre explicitly")
    return np.linalg.solve(a, b)


def canonical_rig(world_to_cam: np.ndarray, metres_per_unit: float = 1.0, head_center: np.ndarray | None = None,
                  align: bool = True) -> tuple[np.ndarray, dict]:
    """World-to-camera matrices [C, 4, 4] re-expressed in the canonical head frame (module docstring)."""
    w2c = np.array(world_to_cam, dtype=np.float64)
    w2c[:, :3, 3] *= metres_per_unit
    centre = look_at_center(w2c) if head_center is None else np.asarray(head_center, float) * metres_per_unit
    rot, t = w2c[:, :3, :3], w2c[:, :3, 3]
    if align:
        up = -rot[:, 1, :].mean(0)  # camera -y (image up) in world coordinates
        up /= np.linalg.norm(up)
        centres = -np.einsum("cji,cj->ci", rot, t)
        front = centres.mean(0) - centre
        front -= front.dot(up) * up
        if np.linalg.norm(front) < 1e-9:
            raise ValueError("cannot tell the face direction: the cameras surround the head evenly; set align=False")
        front /= np.linalg.norm(front)
        axes = np.stack([np.cross(up, front), up, front])  # rows: canonical x, y, z in world coordinates
    else:
        axes = np.eye(3)
    out = np.zeros_like(w2c)
    out[:, :3, :3] = rot @ axes.T
    out[:, :3, 3] = np.einsum("cij,j->ci", rot, centre) + t
    out[:, 3, 3] = 1.0
    return out, {"head_center_world": centre.tolist(), "axes_world": axes.tolist(), "metres_per_unit": metres_per_unit}


def yaw_pitch_of(world_to_cam: np.ndarray) -> tuple[float, float]:
    """Yaw and pitch (degrees) of a canonical-frame camera's position around the head."""
    c = -world_to_cam[:3, :3].T @ world_to_cam[:3, 3]
    yaw = math.degrees(math.atan2(c[0], c[2]))
    pitch = math.degrees(math.atan2(c[1], math.hypot(c[0], c[2])))
    return yaw, pitch


def fit_image(image: np.ndarray, K: np.ndarray, max_side: int | None,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Downscale so the longer side is at most ``max_side`` (aspect kept), scaling K to match."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, K, mask
    s = max_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    K = K.copy()
    K[0] *= nw / w
    K[1] *= nh / h

    def rs(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((nw, nh), Image.Resampling.LANCZOS))

    return rs(image), K, (None if mask is None else rs(mask))


def to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """Any [H, W, C] uint8 array as RGB (grey repeated, alpha dropped)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, -1)
    return arr[..., :3]


def convert_items(items: Iterable[tuple[str, Callable[[ConversionReport], SubjectData]]], out: str | Path,
                  meta: dict | None = None, progress: bool = True) -> ConversionReport:
    """Run each (name, build) item, write what succeeds, collect what fails; write the index at the end."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(out)
    records: list[SubjectRecord] = []
    for name, build in tqdm(list(items), desc="convert", unit="subject", disable=not progress):
        try:
            data = build(report)
            if not data.views:
                raise DatasetFormatError("no readable view left")
            records.append(write_subject(out / "subjects" / data.id, data.id, data.kind, data.split, data.views,
                                         data.meta))
            report.converted.append(data.id)
        except ITEM_ERRORS as exc:
            report.failed.append((name, f"{type(exc).__name__}: {exc}"))
    write_index(out, records, meta)
    return report


def canonical_view(name: str, rgb: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray, max_side: int | None,
                   mask: np.ndarray | None = None) -> ViewData:
    """A converted view in the head frame: image fitted to ``max_side`` (K scaled), yaw/pitch recorded for the
    sampler (which keeps back views out of the inputs)."""
    rgb, K, mask = fit_image(rgb, K, max_side, mask)
    yaw, pitch = yaw_pitch_of(world_to_cam)
    return ViewData(name=name, K=K, world_to_cam=world_to_cam, rgb=rgb, mask=mask,
                    extra={"yaw_deg": round(yaw, 3), "pitch_deg": round(pitch, 3)})


def load_views_collecting(subject: str, loaders: Iterable[tuple[str, Callable[[], ViewData]]],
                          report: ConversionReport) -> list[ViewData]:
    """Build each view; a bad image skips that view (recorded in the report), not the subject."""
    views = []
    for name, load in loaders:
        try:
            views.append(load())
        except ITEM_ERRORS as exc:
            report.skipped_views.append((f"{subject}/{name}", f"{type(exc).__name__}: {exc}"))
    return views


def split_for(subject_id: str, test_ids: Iterable[str], val_ids: Iterable[str] = ()) -> str:
    if subject_id in set(test_ids):
        return "test"
    if subject_id in set(val_ids):
        return "val"
    return "train"


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode an in-memory image (e.g. a zip member) with the same clear errors as files."""
    import io

    from PIL import UnidentifiedImageError

    if not data:
        raise DatasetFormatError(f"{where}: image is empty (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError:
        raise DatasetFormatError(f"{where}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"{where}: image is truncated or corrupt ({exc})") from None
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")
    return np.asarray(im)


__all__ = ["ConversionReport", "SubjectData", "canonical_rig", "canonical_view", "convert_items",
           "decode_image_bytes", "fit_image",
           "load_views_collecting", "look_at_center", "split_for", "to_uint8_rgb", "yaw_pitch_of"]

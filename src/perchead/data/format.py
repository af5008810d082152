"""The on-disk dataset format (docs/data.md): reading with validation, loading views, writing atomically.

Layout::

    DATASET/
      dataset.json                 index: format, version, subjects [{id, path, kind, split}], free "meta"
      subjects/<id>/
        subject.json               format, version, id, kind ("studio" | "wild"), split, source, free extras
        cameras.json               {"views": [{name, image, mask?, segmentation?, width, height, K, world_to_cam,
                                               yaw_deg?, pitch_deg?, face_visible?}]}
        images/<view>.png          RGBA (alpha = mask), or RGB + masks/<view>.png (8-bit, 255 = head)
        segmentation/<view>.png    optional 8-bit class ids, SEGMENT_CLASSES order

Cameras: ``K`` 3x3 in pixels (pixel centres at +0.5), ``world_to_cam`` 4x4 in OpenCV axes, world = the
canonical head frame (metres, origin at the head centre, +y up, face towards +z).

``subject.json`` is written last: a subject folder without it is unfinished and is redone by a rerun.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..io.atomic import atomic_write_bytes, atomic_write_json

FORMAT_NAME = "perchead-heads"
FORMAT_VERSION = 1
INDEX_FILE = "dataset.json"
SUBJECT_FILE = "subject.json"
CAMERAS_FILE = "cameras.json"
KINDS = ("studio", "wild")
SPLITS = ("train", "val", "test")

# CelebAMask-HQ / FaRL face-parsing classes (docs/design.md section 2, editing row); "l_"/"r_" = the subject's own
# left/right (left = +x in the head frame, which appears on the image's right in a frontal view).
SEGMENT_CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
SEG = {name: i for i, name in enumerate(SEGMENT_CLASSES)}


class DatasetFormatError(ValueError):
    """A dataset file or field is missing or wrong; the message names the file and the field."""


# -- records ------------------------------------------------------------------------------------------------

@dataclass
class ViewRecord:
    name: str
    image: Path
    K: Tensor  # [3, 3] pixels
    world_to_cam: Tensor  # [4, 4] OpenCV axes
    width: int
    height: int
    mask: Path | None = None
    segmentation: Path | None = None
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    face_visible: bool | None = None


@dataclass
class SubjectRecord:
    id: str
    kind: str
    split: str
    root: Path
    views: list[ViewRecord]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadDataset:
    root: Path
    subjects: list[SubjectRecord]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.subjects)

    def split(self, split: str) -> list[SubjectRecord]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [s for s in self.subjects if s.split == split]


@dataclass
class LoadedView:
    image: Tensor  # [3, H, W] float in [0, 1]
    mask: Tensor  # [1, H, W] float in [0, 1]; ones where the view has no mask
    has_mask: bool
    segmentation: Tensor | None  # [H, W] int64 class ids, or None


# -- reading ------------------------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from None


def _field(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetFormatError(f"{where}: missing field {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass in Python; JSON true/false must not pass as a number.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetFormatError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _matrix(value: Any, shape: tuple[int, int], where: str) -> Tensor:
    try:
        m = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: must be a {shape[0]}x{shape[1]} list of numbers") from None
    if tuple(m.shape) != shape:
        raise DatasetFormatError(f"{where}: must be {shape[0]}x{shape[1]}, got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise DatasetFormatError(f"{where}: contains NaN or infinite values")
    return m


def validate_camera(K: Tensor, world_to_cam: Tensor, where: str) -> None:
    """Raise DatasetFormatError unless K is a pixel pinhole matrix and world_to_cam a rigid transform."""
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0:
        raise DatasetFormatError(f"{where}.K: expected [[fx,s,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0 "
                                 f"(pixels), got {K.tolist()}")
    if not torch.allclose(world_to_cam[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=world_to_cam.dtype)):
        raise DatasetFormatError(f"{where}.world_to_cam: last row must be [0, 0, 0, 1]")
    rot = world_to_cam[:3, :3]
    if not torch.allclose(rot @ rot.T, torch.eye(3, dtype=rot.dtype), atol=1e-3) or torch.det(rot) < 0:
        raise DatasetFormatError(f"{where}.world_to_cam: rotation part is not a proper rotation (orthonormal, "
                                 "det +1); scaled or mirrored cameras are not allowed")


def _relative_file(folder: Path, value: Any, where: str, must_exist: bool = True) -> Path:
    if not isinstance(value, str) or not value:
        raise DatasetFormatError(f"{where}: must be a relative file path (string)")
    path = (folder / value).resolve()
    if Path(value).is_absolute() or not path.is_relative_to(folder.resolve()):
        raise DatasetFormatError(f"{where}: {value!r} must be a path inside {folder}")
    if must_exist and not path.is_file():
        raise DatasetFormatError(f"{where}: file {path} not found")
    return path


def read_subject(folder: str | Path, check_images: bool = False) -> SubjectRecord:
    """Read and validate one subject folder. ``check_images`` also opens every image's header."""
    folder = Path(folder)
    meta_path, cams_path = folder / SUBJECT_FILE, folder / CAMERAS_FILE
    meta = _load_json(meta_path)
    where = str(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetFormatError(f"{where}: field 'format' must be {FORMAT_NAME!r}")
    version = _field(meta, "version", where, int)
    if version > FORMAT_VERSION:
        raise DatasetFormatError(f"{where}: format version {version} is newer than this perchead reads "
                                 f"({FORMAT_VERSION}); upgrade perchead")
    sid = _field(meta, "id", where, str)
    kind = _field(meta, "kind", where, str)
    split = _field(meta, "split", where, str)
    if kind not in KINDS:
        raise DatasetFormatError(f"{where}: field 'kind' must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise DatasetFormatError(f"{where}: field 'split' must be one of {SPLITS}, got {split!r}")

    cams = _load_json(cams_path)
    views_json = _field(cams, "views", str(cams_path), list)
    if not views_json:
        raise DatasetFormatError(f"{cams_path}: 'views' is empty")
    if kind == "wild" and len(views_json) != 1:
        raise DatasetFormatError(f"{cams_path}: a 'wild' subject has exactly one view, found {len(views_json)}")
    views, names = [], set()
    for i, v in enumerate(views_json):
        w = f"{cams_path}: views[{i}]"
        name = _field(v, "name", w, str)
        if name in names:
            raise DatasetFormatError(f"{w}: duplicate view name {name!r}")
        names.add(name)
        width, height = _field(v, "width", w, int), _field(v, "height", w, int)
        if width <= 0 or height <= 0:
            raise DatasetFormatError(f"{w}: width and height must be positive, got {width}x{height}")
        K = _matrix(_field(v, "K", w, list), (3, 3), f"{w}.K")
        w2c = _matrix(_field(v, "world_to_cam", w, list), (4, 4), f"{w}.world_to_cam")
        validate_camera(K, w2c, w)
        opt = {k: _relative_file(folder, v[k], f"{w}.{k}") if v.get(k) is not None else None
               for k in ("mask", "segmentation")}
        extra = {}
        for key in ("yaw_deg", "pitch_deg"):
            if v.get(key) is not None:
                extra[key] = float(_field(v, key, w, (int, float)))
        if v.get("face_visible") is not None:
            extra["face_visible"] = bool(_field(v, "face_visible", w, bool))
        view = ViewRecord(name, _relative_file(folder, _field(v, "image", w, str), f"{w}.image"), K.float(),
                          w2c.float(), width, height, opt["mask"], opt["segmentation"], **extra)
        if check_images:
            for key in ("image", "mask", "segmentation"):
                path = getattr(view, key)
                if path is not None:
                    size = image_size(path)
                    if size != (width, height):
                        raise DatasetFormatError(f"{w}.{key}: {path} is {size[0]}x{size[1]} but the view says "
                                                 f"{width}x{height}")
        views.append(view)
    extras = {k: v for k, v in meta.items() if k not in ("format", "version", "id", "kind", "split")}
    return SubjectRecord(sid, kind, split, folder, views, extras)


def read_dataset(root: str | Path, check_images: bool = False) -> HeadDataset:
    """Read ``root/dataset.json`` and every subject it lists, validating all of it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found")
    index_path = root / INDEX_FILE
    index = _load_json(index_path)
    where = str(index_path)
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise DatasetFormatError(f"{where}: field 'format' must be {FORMAT_NAME!r} (is this a perchead dataset? "
                                 "convert it with the readers in perchead.data.readers)")
    entries = _field(index, "subjects", where, list)
    subjects, seen = [], set()
    for i, e in enumerate(entries):
        w = f"{where}: subjects[{i}]"
        sid = _field(e, "id", w, str)
        if sid in seen:
            raise DatasetFormatError(f"{w}: duplicate subject id {sid!r}")
        seen.add(sid)
        rel = _field(e, "path", w, str)
        folder = (root / rel).resolve()
        if not folder.is_relative_to(root.resolve()):
            raise DatasetFormatError(f"{w}.path: {rel!r} must be a folder inside {root}")
        if not folder.is_dir():
            raise DatasetFormatError(f"{w}.path: subject folder {folder} not found")
        subject = read_subject(folder, check_images)
        for key in ("id", "kind", "split"):
            if key in e and e[key] != getattr(subject, key):
                raise DatasetFormatError(f"{w}.{key}: index says {e[key]!r} but {folder / SUBJECT_FILE} says "
                                         f"{getattr(subject, key)!r}")
        subjects.append(subject)
    return HeadDataset(root, subjects, index.get("meta", {}))


# -- images -------------------------------------------------------------------------------------------------

def _open_image(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DatasetFormatError(f"{path}: image file is empty (0 bytes); re-export or remove it")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DatasetFormatError(f"{path}: not an image Pillow can read (wrong extension, or another kind "
                                 "of file)") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only."""
    with _open_image(path) as im:
        return im.size


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image fully to uint8 [H, W, C] (C = 1, 3 or 4); truncated or corrupt files raise."""
    path = Path(path)
    im = _open_image(path)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: image is truncated or corrupt ({exc}); re-export or remove it") \
            from None
    with im:
        if im.mode.startswith("I"):  # 16-bit greyscale (Pillow opens it as "I" or "I;16*")
            arr = np.asarray(im, dtype=np.float64).clip(0, 65535) / 65535.0
            return (arr * 255 + 0.5).astype(np.uint8)[..., None]
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        arr = np.array(im)  # a writable copy: torch.from_numpy refuses read-only buffers
    return arr[..., None] if arr.ndim == 2 else arr


def load_view(view: ViewRecord) -> LoadedView:
    """Image, mask and segmentation of one view as tensors (see :class:`LoadedView`)."""
    arr = read_image(view.image)
    if arr.shape[:2] != (view.height, view.width):
        raise DatasetFormatError(f"{view.image}: image is {arr.shape[1]}x{arr.shape[0]} but cameras.json says "
                                 f"{view.width}x{view.height}")
    rgb = arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, -1)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    if view.mask is not None:
        m = read_image(view.mask)
        if m.shape[:2] != arr.shape[:2]:
            raise DatasetFormatError(f"{view.mask}: mask size {m.shape[1]}x{m.shape[0]} differs from its image")
        channel = m[..., -1] if m.shape[-1] in (2, 4) else m[..., 0]  # alpha if it has one, else grey
        mask, has_mask = torch.from_numpy(np.ascontiguousarray(channel)), True
    elif arr.shape[-1] == 4:
        mask, has_mask = torch.from_numpy(np.ascontiguousarray(arr[..., 3])), True
    else:
        mask, has_mask = torch.full(arr.shape[:2], 255, dtype=torch.uint8), False
    seg = None
    if view.segmentation is not None:
        s = read_image(view.segmentation)
        if s.shape[:2] != arr.shape[:2] or s.shape[-1] != 1:
            raise DatasetFormatError(f"{view.segmentation}: must be a single-channel 8-bit map the size of its "
                                     "image")
        seg = torch.from_numpy(s[..., 0].astype(np.int64))
        if int(seg.max()) >= len(SEGMENT_CLASSES):
            raise DatasetFormatError(f"{view.segmentation}: class id {int(seg.max())} is out of range "
                                     f"(0..{len(SEGMENT_CLASSES) - 1})")
    return LoadedView(image, (mask.float() / 255.0)[None], has_mask, seg)


# -- writing ------------------------------------------------------------------------------------------------

def save_png(path: str | Path, array: np.ndarray, compress_level: int = 1) -> None:
    buf = io.BytesIO()
    arr = np.ascontiguousarray(array)
    Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(
        buf, format="PNG", compress_level=compress_level)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class ViewData:
    """One view to write: ``rgba`` uint8 [H, W, 4] (alpha = mask), or ``rgb`` [H, W, 3] with optional ``mask``."""

    name: str
    K: Tensor | np.ndarray
    world_to_cam: Tensor | np.ndarray
    rgba: np.ndarray | None = None
    rgb: np.ndarray | None = None
    mask: np.ndarray | None = None
    segmentation: np.ndarray | None = None  # [H, W] uint8 class ids
    extra: dict[str, Any] = field(default_factory=dict)  # yaw_deg, pitch_deg, face_visible


def _as_list(m: Tensor | np.ndarray) -> list:
    return [[float(x) for x in row] for row in np.asarray(torch.as_tensor(m, dtype=torch.float64))]


def write_subject(folder: str | Path, subject_id: str, kind: str, split: str, views: list[ViewData],
                  meta: dict[str, Any] | None = None) -> SubjectRecord:
    """Write one subject folder (images first, subject.json last) and return its validated record."""
    folder = Path(folder)
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"kind must be one of {KINDS} and split one of {SPLITS}, got {kind!r}, {split!r}")
    (folder / SUBJECT_FILE).unlink(missing_ok=True)  # mark unfinished while rewriting
    entries = []
    for v in views:
        if (v.rgba is None) == (v.rgb is None):
            raise ValueError(f"view {v.name!r}: give exactly one of rgba or rgb")
        img = v.rgba if v.rgba is not None else v.rgb
        h, w = img.shape[:2]
        K, w2c = _as_list(v.K), _as_list(v.world_to_cam)
        validate_camera(torch.tensor(K), torch.tensor(w2c), f"view {v.name!r}")
        entry: dict[str, Any] = {"name": v.name, "image": f"images/{v.name}.png", "width": w, "height": h,
                                 "K": K, "world_to_cam": w2c}
        save_png(folder / entry["image"], img)
        if v.mask is not None:
            entry["mask"] = f"masks/{v.name}.png"
            save_png(folder / entry["mask"], v.mask)
        if v.segmentation is not None:
            entry["segmentation"] = f"segmentation/{v.name}.png"
            save_png(folder / entry["segmentation"], v.segmentation.astype(np.uint8))
        entry.update({k: (float(x) if isinstance(x, float) else x) for k, x in v.extra.items()})
        entries.append(entry)
    atomic_write_json(folder / CAMERAS_FILE, {"views": entries})
    atomic_write_json(folder / SUBJECT_FILE, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "id": subject_id,
                                              "kind": kind, "split": split, **(meta or {})})
    return read_subject(folder)


def write_index(root: str | Path, subjects: list[SubjectRecord], meta: dict[str, Any] | None = None) -> Path:
    root = Path(root)
    entries = [{"id": s.id, "path": os.path.relpath(s.root, root), "kind": s.kind, "split": s.split}
               for s in subjects]
    path = root / INDEX_FILE
    atomic_write_json(path, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": meta or {},
                             "subjects": entries})
    return path


def subject_is_complete(folder: str | Path) -> bool:
    try:
        read_subject(folder)
    except (DatasetFormatError, OSError):
        return False
    return True

"""FFHQ-style single portraits -> "wild" subjects, with or without EG3D/PanoHead camera labels.

Layout read: a folder of images (searched recursively: .png .jpg .jpeg .webp), optionally with EG3D's
``dataset.json``::

    {"labels": [["00000/img00000000.png", [16 numbers: cam2world 4x4 row-major, 9 numbers: K normalised by
                                          the image size]], ...]}

EG3D (and PanoHead, same label format) write cam2world in OpenCV camera axes, in a world whose +y is up and
whose face looks towards +z, camera ~2.7 units away (a frontal label is diag(1, -1, -1) with t = (0, 0, 2.7)):
the canonical axes already, so only units change. ``metres_per_unit`` defaults to the scale at which EG3D's
frame at the head (2.7 / 4.2647 units tall) matches the standard input camera's (2 * 1.5 * tan 7.5 deg m) --
an assumption that EG3D's FFHQ crop frames the head like perchead's input crop. Without labels, each image
gets the standard input camera (``perchead.geometry.input_camera``), which is right for photos cropped by
``perchead preprocess``. Masks come from an alpha channel if the image has one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, input_camera
from ..format import DatasetFormatError, read_image
from .common import ConversionReport, SubjectData, canonical_view, convert_items, split_for, to_uint8_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EG3D_METRES_PER_UNIT = 2 * HEAD_CAMERA_RADIUS * math.tan(math.radians(HEAD_CAMERA_FOV_DEG / 2)) / (2.7 / 4.2647)


@dataclass
class FFHQConfig:
    labels: str | None = "auto"  # path to dataset.json; "auto": SRC/dataset.json if present; None: ignore
    metres_per_unit: float = EG3D_METRES_PER_UNIT
    max_side: int | None = 512
    limit: int | None = None  # convert at most this many images (sorted by path)
    test_ids: tuple[str, ...] = ()  # image stems
    val_ids: tuple[str, ...] = ()


def load_eg3d_labels(path: Path) -> dict[str, np.ndarray]:
    """{relative image path: 25 numbers} from an EG3D/PanoHead dataset.json (clear errors on bad entries)."""
    try:
        data = json.loads(Path(path).read_text())
        labels = data["labels"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: expected {{\"labels\": [[image, [25 numbers]], ...]}} "
                                 f"({type(exc).__name__}: {exc})") from None
    if labels is None:
        raise DatasetFormatError(f"{path}: 'labels' is null (a dataset.json without camera labels)")
    out = {}
    for i, entry in enumerate(labels):
        try:
            name, values = entry
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetFormatError(f"{path}: labels[{i}] must be [image path, [25 numbers]]") from None
        if arr.shape != (25,) or not np.isfinite(arr).all():
            raise DatasetFormatError(f"{path}: labels[{i}] ({name}) must hold 25 finite numbers, got shape "
                                     f"{arr.shape}")
        out[str(name).replace("\\", "/")] = arr
    return out


def eg3d_camera(label: np.ndarray, width: int, height: int, metres_per_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """(K pixels, world_to_cam) from one 25-number EG3D label."""
    c2w = label[:16].reshape(4, 4).copy()
    c2w[:3, 3] *= metres_per_unit
    w2c = np.linalg.inv(c2w)
    kn = label[16:].reshape(3, 3)
    K = np.array([[kn[0, 0] * width, kn[0, 1] * width, kn[0, 2] * width],
                  [0.0, kn[1, 1] * height, kn[1, 2] * height], [0.0, 0.0, 1.0]])
    return K, w2c


def _image(path: Path, rel: str, label: np.ndarray | None, cfg: FFHQConfig) -> SubjectData:
    arr = read_image(path)
    mask = arr[..., 3] if arr.shape[-1] == 4 else None
    img = to_uint8_rgb(arr)
    h, w = img.shape[:2]
    if label is not None:
        K, w2c = eg3d_camera(label, w, h, cfg.metres_per_unit)
        source = "eg3d-label"
    else:
        cam = input_camera(max(w, h))
        K = cam.Ks[0].double().numpy().copy()
        K[0, 2], K[1, 2] = w / 2, h / 2
        w2c = cam.viewmats[0].double().numpy()
        source = "standard-input-camera"
    stem = Path(rel).with_suffix("").as_posix().replace("/", "_")
    view = canonical_view("input", img, K, w2c, cfg.max_side, mask)
    return SubjectData(f"ffhq_{stem}", "wild", split_for(stem, cfg.test_ids, cfg.val_ids), [view],
                       {"source": "ffhq", "image": rel, "camera": source})


def convert_ffhq(src: str | Path, out: str | Path, config: FFHQConfig | None = None,
                 progress: bool = True) -> ConversionReport:
    cfg = config or FFHQConfig()
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"FFHQ folder {src} not found")
    labels_path = None
    if cfg.labels == "auto":
        labels_path = src / "dataset.json" if (src / "dataset.json").is_file() else None
    elif cfg.labels is not None:
        labels_path = Path(cfg.labels)
    labels = load_eg3d_labels(labels_path) if labels_path is not None else None
    images = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if cfg.limit is not None:
        images = images[: cfg.limit]
    if not images:
        raise FileNotFoundError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) found")

    def build(path: Path):
        rel = path.relative_to(src).as_posix()

        def run(report: ConversionReport) -> SubjectData:
            label = None
            if labels is not None:
                if rel not in labels:
                    raise DatasetFormatError(f"{labels_path}: no camera label for {rel}")
                label = labels[rel]
            return _image(path, rel, label, cfg)
        return run

    meta = {"source": "ffhq", "labels": None if labels_path is None else str(labels_path), "config": asdict(cfg)}
    return convert_items([(str(p), build(p)) for p in images], out, meta, progress)

"""NeRSemble v2 (raw download layout) -> the perchead format.

Layout read (per participant, as written by the official ``nersemble-data`` downloader)::

    SRC/<pid:03d>/calibration/camera_params.json   {"world_2_cam": {serial: 4x4 OpenCV}, "intrinsics": 3x3}
    SRC/<pid>/sequences/<SEQ>/images/cam_<serial>.mp4                       (v2 raw: one video per camera)
    SRC/<pid>/sequences/<SEQ>/timesteps/frame_<t:05d>/images/cam_<serial>.jpg|png   (extracted frames)
    SRC/<pid>/sequences/<SEQ>/timesteps/frame_<t:05d>/alpha_map/cam_<serial>.png    (optional mattes)

The intrinsics are shared by the 16 cameras and given for full-resolution frames (``calibration_size``,
2200 x 3208); frames of another size (e.g. downscaled extractions) get K scaled to match. One frame
(``timestep``) of one sequence becomes one studio subject.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..format import DatasetFormatError, ViewData, read_image
from .common import (
    ConversionReport,
    SubjectData,
    canonical_rig,
    canonical_view,
    convert_items,
    load_views_collecting,
    split_for,
    to_uint8_rgb,
)

# PercHead evaluates on these NeRSemble participants (docs/design.md section 2); they never enter training.
NERSEMBLE_TEST_IDS = ("059", "070", "370", "373", "374")


@dataclass
class NeRSembleConfig:
    sequence: str = "EXP-1-head"
    timestep: int = 0
    participants: tuple[str, ...] | None = None  # None: every participant folder found
    max_side: int | None = 512  # downscale frames so the longer side is at most this
    calibration_size: tuple[int, int] = (2200, 3208)  # (width, height) the intrinsics refer to
    metres_per_unit: float = 1.0
    test_ids: tuple[str, ...] = NERSEMBLE_TEST_IDS
    val_ids: tuple[str, ...] = ()
    align: bool = True  # rotate the rig so the face looks towards +z and +y is up


def _read_video_frame(path: Path, index: int) -> np.ndarray:
    import imageio.v2 as iio

    try:
        reader = iio.get_reader(path, "ffmpeg")
    except (OSError, RuntimeError) as exc:
        raise DatasetFormatError(f"{path}: cannot open video ({exc})") from None
    try:
        return np.asarray(reader.get_data(index))
    except (IndexError, OSError, RuntimeError) as exc:
        raise DatasetFormatError(f"{path}: cannot read frame {index} ({exc})") from None
    finally:
        reader.close()


def _frame_source(root: Path, seq: str, t: int, serial: str) -> tuple[str, Path]:
    frames = root / "sequences" / seq / "timesteps" / f"frame_{t:05d}" / "images"
    for ext in (".jpg", ".png", ".jpeg"):
        p = frames / f"cam_{serial}{ext}"
        if p.exists():
            return "image", p
    video = root / "sequences" / seq / "images" / f"cam_{serial}.mp4"
    if video.exists():
        return "video", video
    raise FileNotFoundError(f"no frame {t} for camera {serial}: neither {frames}/cam_{serial}.jpg nor {video}")


def _participant(root: Path, cfg: NeRSembleConfig, report: ConversionReport) -> SubjectData:
    pid = root.name
    calib_path = root / "calibration" / "camera_params.json"
    if not calib_path.is_file():
        raise DatasetFormatError(f"{calib_path}: file not found (is {root} a NeRSemble v2 participant folder?)")
    try:
        calib = json.loads(calib_path.read_text())
        serials = sorted(calib["world_2_cam"])
        w2c = np.array([calib["world_2_cam"][s] for s in serials], dtype=np.float64)
        K0 = np.array(calib["intrinsics"], dtype=np.float64)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{calib_path}: expected 'world_2_cam' {{serial: 4x4}} and 'intrinsics' 3x3 "
                                 f"({type(exc).__name__}: {exc})") from None
    if w2c.ndim != 3 or w2c.shape[1:] != (4, 4) or K0.shape != (3, 3):
        raise DatasetFormatError(f"{calib_path}: world_2_cam entries must be 4x4 and intrinsics 3x3")
    canon, info = canonical_rig(w2c, cfg.metres_per_unit, None, cfg.align)

    def loader(i: int, serial: str):
        def load() -> ViewData:
            kind, path = _frame_source(root, cfg.sequence, cfg.timestep, serial)
            img = read_image(path) if kind == "image" else _read_video_frame(path, cfg.timestep)
            img = to_uint8_rgb(img)
            h, w = img.shape[:2]
            K = K0.copy()
            K[0] *= w / cfg.calibration_size[0]
            K[1] *= h / cfg.calibration_size[1]
            alpha = path.parent.parent / "alpha_map" / f"cam_{serial}.png" if kind == "image" else None
            mask = read_image(alpha)[..., 0] if alpha is not None and alpha.exists() else None
            return canonical_view(f"cam_{serial}", img, K, canon[i], cfg.max_side, mask)
        return load

    views = load_views_collecting(f"nersemble_{pid}", [(s, loader(i, s)) for i, s in enumerate(serials)], report)
    meta = {"source": "nersemble-v2", "participant": pid, "sequence": cfg.sequence, "timestep": cfg.timestep,
            "canonical_frame": info}
    return SubjectData(f"nersemble_{pid}", "studio", split_for(pid, cfg.test_ids, cfg.val_ids), views, meta)


def convert_nersemble(src: str | Path, out: str | Path, config: NeRSembleConfig | None = None,
                      progress: bool = True) -> ConversionReport:
    cfg = config or NeRSembleConfig()
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"NeRSemble folder {src} not found")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and p.name.isdigit())
    if cfg.participants is not None:
        folders = [p for p in folders if p.name in set(cfg.participants)]
    if not folders:
        raise FileNotFoundError(f"{src}: no participant folders (3-digit ids such as 017/) found")
    items = [(str(p), lambda rep, p=p: _participant(p, cfg, rep)) for p in folders]
    return convert_items(items, out, {"source": "nersemble-v2", "config": asdict(cfg)}, progress)

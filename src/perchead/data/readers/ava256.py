"""Ava-256 (Meta Codec Avatar Studio) dome captures -> the perchead format.

Layout read (DATASHEET.md and data/ava_dataset.py of facebookresearch/ava-256), one folder per capture
(``<mcd>--<mct>--<sid>``, optionally with the ``decoder/`` level)::

    CAPTURE/decoder/camera_calibration.json   {"KRT": [{"cameraId", "K": 3x3 TRANSPOSED, "T": 4x4 = [R | t]
                                              TRANSPOSED (rotation rows in the first 3 columns, translation
                                              in the last row), "distortion"}]}, millimetres, world->camera
    CAPTURE/decoder/frame_list.csv            header "seg_id,frame_id"
    CAPTURE/decoder/image/cam<ID>.zip          members cam<ID>/<frame:06d>.avif (RGB, 667 x 1024 or 1334 x 2048)
    CAPTURE/decoder/head_pose/head_pose.zip    members <frame:06d>.txt, 3x4 head pose in world (optional)

The intrinsics refer to the full 2668 x 4096 sensor (``calibration_size``) and are scaled to the stored
image size. Lens distortion is ignored (small at this focal length). The head centre is the tracked head
pose's translation when present, else the cameras' look-at point. AVIF decoding needs Pillow built with
AVIF (``PIL.features.check("avif")``, Pillow >= 11.3 wheels) or the ``pillow-avif-plugin`` package.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..format import DatasetFormatError, ViewData
from .common import (
    ConversionReport,
    SubjectData,
    canonical_rig,
    canonical_view,
    convert_items,
    decode_image_bytes,
    load_views_collecting,
    split_for,
    to_uint8_rgb,
)

# PercHead evaluates on "11 unseen Ava-256 captures" but the paper does not list them, nor does the
# Ava-256 repository ship such a list: pass the capture folder names as ``test_ids`` (empty by default).
AVA256_TEST_IDS: tuple[str, ...] = ()


@dataclass
class Ava256Config:
    frame: str | None = None  # frame_id to use; None: the first EXP_neutral_peak frame, else the first listed
    cameras: tuple[str, ...] | None = None  # camera ids; None: all calibrated cameras with an image zip
    max_side: int | None = 512
    calibration_size: tuple[int, int] = (2668, 4096)  # (width, height) the intrinsics refer to
    metres_per_unit: float = 0.001  # calibration is in millimetres
    test_ids: tuple[str, ...] = AVA256_TEST_IDS
    val_ids: tuple[str, ...] = ()
    use_head_pose: bool = True
    align: bool = True


def avif_support() -> None:
    """Make sure Pillow can decode AVIF, or raise an error that names the missing plugin."""
    from PIL import features

    if features.check("avif"):
        return
    try:
        import pillow_avif  # noqa: F401  (registers the AVIF plugin on import)
    except ImportError:
        raise RuntimeError("Ava-256 frames are AVIF images but this Pillow cannot decode AVIF: install Pillow "
                           ">= 11.3 (wheels include AVIF) or `pip install pillow-avif-plugin`") from None


def load_ava_calibration(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{camera id: (K 3x3, world_to_cam 4x4)} in the file's units, un-transposed."""
    try:
        items = json.loads(path.read_text())["KRT"]
        out = {}
        for item in items:
            K = np.array(item["K"], dtype=np.float64).T
            T = np.array(item["T"], dtype=np.float64)
            w2c = np.eye(4)
            w2c[:3, :] = T[:4, :3].T
            out[str(item["cameraId"])] = (K, w2c)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: expected {{\"KRT\": [{{\"cameraId\", \"K\", \"T\"}}, ...]}} "
                                 f"({type(exc).__name__}: {exc})") from None
    if not out:
        raise DatasetFormatError(f"{path}: 'KRT' lists no camera")
    return out


def _frame_id(path: Path, wanted: str | None) -> str:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        frames = [(r["seg_id"], r["frame_id"]) for r in rows]
    except (KeyError, csv.Error, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: expected a CSV with columns seg_id,frame_id ({exc})") from None
    if not frames:
        raise DatasetFormatError(f"{path}: lists no frame")
    if wanted is not None:
        if all(int(f) != int(wanted) for _, f in frames):
            raise DatasetFormatError(f"{path}: frame {wanted} is not listed")
        return wanted
    neutral = [f for s, f in frames if s == "EXP_neutral_peak"]
    return (neutral or [frames[0][1]])[0]


def _zip_member(zpath: Path, names: list[str]) -> bytes:
    with zipfile.ZipFile(zpath) as z:
        members = set(z.namelist())
        for n in names:
            if n in members:
                return z.read(n)
    raise DatasetFormatError(f"{zpath}: none of {names} in the archive")


def _capture(root: Path, cfg: Ava256Config, report: ConversionReport) -> SubjectData:
    cap_id = root.name
    dec = root / "decoder" if (root / "decoder").is_dir() else root
    calib = load_ava_calibration(dec / "camera_calibration.json")
    frame = _frame_id(dec / "frame_list.csv", cfg.frame)
    fname = f"{int(frame):06d}"
    cams = [c for c in (cfg.cameras or sorted(calib)) if c in calib and (dec / "image" / f"cam{c}.zip").exists()]
    if len(cams) < 2:
        raise DatasetFormatError(f"{dec / 'image'}: fewer than 2 cameras with both a calibration and cam<ID>.zip")
    centre = None
    hp_zip = dec / "head_pose" / "head_pose.zip"
    if cfg.use_head_pose and hp_zip.exists():
        pose = np.loadtxt(io.StringIO(_zip_member(hp_zip, [f"{fname}.txt"]).decode()))
        if pose.shape != (3, 4):
            raise DatasetFormatError(f"{hp_zip}:{fname}.txt must hold a 3x4 matrix")
        centre = pose[:, 3]
    canon, info = canonical_rig(np.stack([calib[c][1] for c in cams]), cfg.metres_per_unit, centre, cfg.align)

    def loader(i: int, cam: str):
        def load() -> ViewData:
            zpath = dec / "image" / f"cam{cam}.zip"
            data = _zip_member(zpath, [f"cam{cam}/{fname}.avif", f"{fname}.avif", f"cam{cam}/{fname}.png",
                                       f"{fname}.png"])
            img = to_uint8_rgb(decode_image_bytes(data, f"{zpath}:{fname}"))
            h, w = img.shape[:2]
            K = calib[cam][0].copy()
            K[0] *= w / cfg.calibration_size[0]
            K[1] *= h / cfg.calibration_size[1]
            return canonical_view(f"cam{cam}", img, K, canon[i], cfg.max_side)
        return load

    views = load_views_collecting(f"ava_{cap_id}", [(c, loader(i, c)) for i, c in enumerate(cams)], report)
    meta = {"source": "ava-256", "capture": cap_id, "frame": frame, "canonical_frame": info,
            "head_center": "head_pose" if centre is not None else "camera look-at point"}
    return SubjectData(f"ava_{cap_id}", "studio", split_for(cap_id, cfg.test_ids, cfg.val_ids), views, meta)


def convert_ava256(src: str | Path, out: str | Path, config: Ava256Config | None = None,
                   progress: bool = True) -> ConversionReport:
    cfg = config or Ava256Config()
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"Ava-256 folder {src} not found")
    avif_support()
    captures = sorted({p.parent.parent if p.parent.name == "decoder" else p.parent
                       for p in src.rglob("camera_calibration.json")})
    if not captures:
        raise FileNotFoundError(f"{src}: no capture with decoder/camera_calibration.json found")
    items = [(str(p), lambda rep, p=p: _capture(p, cfg, rep)) for p in captures]
    return convert_items(items, out, {"source": "ava-256", "config": asdict(cfg)}, progress)

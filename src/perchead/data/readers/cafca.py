"""Cafca synthetic faces (Buehler et al., SIGGRAPH Asia 2024) -> the perchead format.

Layout read (Dataset.md of syntec-research/Cafca; subjects may sit inside chunk folders such as
``00000-00099/``)::

    SRC/.../<SUBJECT:5d>/<EXP:5d>_<ENV:3d>/cameras_json/C00.json ... C29.json   ("K" 3x3, "world2cam" 4x4,
                                                                              OpenCV axes, right-handed)
    SRC/.../<SUBJECT>/<EXP>_<ENV>/color_image/C00.png ...
    SRC/.../<SUBJECT>/<EXP>_<ENV>/foreground_mask/C00.png ...  (8-bit, 255 = head)

One expression in one environment (``expression``, ``environment``) becomes one studio subject. Cafca's
own 16-bit segmentation uses a different label set than the 19 face-parsing classes, so it is not copied.
Back views stay in the data (they are good targets); each view's yaw is recorded so the sampler can refuse
them as inputs, as the paper does with a face detector.
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


@dataclass
class CafcaConfig:
    expression: str = "00000"
    environment: str = "000"
    max_side: int | None = 512
    metres_per_unit: float = 1.0
    test_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()
    align: bool = True


def _camera(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        cam = json.loads(path.read_text())
        K = np.array(cam["K"], dtype=np.float64)
        w2c = np.array(cam["world2cam"], dtype=np.float64)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: expected JSON with 'K' (3x3) and 'world2cam' (4x4 or 3x4) "
                                 f"({type(exc).__name__}: {exc})") from None
    if w2c.shape == (3, 4):
        w2c = np.vstack([w2c, [0.0, 0.0, 0.0, 1.0]])
    if K.shape != (3, 3) or w2c.shape != (4, 4):
        raise DatasetFormatError(f"{path}: 'K' must be 3x3 and 'world2cam' 4x4, got {K.shape} and {w2c.shape}")
    return K, w2c


def _subject(frame_dir: Path, cfg: CafcaConfig, report: ConversionReport) -> SubjectData:
    sid = frame_dir.parent.name
    cam_files = sorted((frame_dir / "cameras_json").glob("C*.json"))
    if not cam_files:
        raise DatasetFormatError(f"{frame_dir / 'cameras_json'}: no camera files C00.json ... found")
    cams, bad = {}, []
    for f in cam_files:
        try:
            cams[f.stem] = _camera(f)
        except DatasetFormatError as exc:
            bad.append((f.stem, exc))
    for name, exc in bad:
        report.skipped_views.append((f"cafca_{sid}/{name}", str(exc)))
    if len(cams) < 2:
        raise DatasetFormatError(f"{frame_dir}: fewer than 2 readable cameras")
    names = sorted(cams)
    canon, info = canonical_rig(np.stack([cams[n][1] for n in names]), cfg.metres_per_unit, None, cfg.align)

    def loader(i: int, name: str):
        def load() -> ViewData:
            img = to_uint8_rgb(read_image(frame_dir / "color_image" / f"{name}.png"))
            mpath = frame_dir / "foreground_mask" / f"{name}.png"
            mask = read_image(mpath)[..., 0] if mpath.exists() else None
            return canonical_view(name, img, cams[name][0], canon[i], cfg.max_side, mask)
        return load

    views = load_views_collecting(f"cafca_{sid}", [(n, loader(i, n)) for i, n in enumerate(names)], report)
    meta = {"source": "cafca", "subject": sid, "expression": cfg.expression, "environment": cfg.environment,
            "canonical_frame": info}
    return SubjectData(f"cafca_{sid}", "studio", split_for(sid, cfg.test_ids, cfg.val_ids), views, meta)


def convert_cafca(src: str | Path, out: str | Path, config: CafcaConfig | None = None,
                  progress: bool = True) -> ConversionReport:
    cfg = config or CafcaConfig()
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"Cafca folder {src} not found")
    frames = sorted(p for p in src.rglob(f"{cfg.expression}_{cfg.environment}") if p.is_dir())
    if not frames:
        raise FileNotFoundError(f"{src}: no <SUBJECT>/{cfg.expression}_{cfg.environment}/ folders found")
    items = [(str(p), lambda rep, p=p: _subject(p, cfg, rep)) for p in frames]
    return convert_items(items, out, {"source": "cafca", "config": asdict(cfg)}, progress)

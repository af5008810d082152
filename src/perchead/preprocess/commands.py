"""``perchead preprocess``: photos -> 512x512 matted head crops, masks and camera metadata."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .pipeline import PreprocessConfig, preprocess_batch


def preprocess(
    images: Annotated[list[Path], tyro.conf.Positional],
    /,
    out: Path = Path("preprocessed"),
    size: int = 512,
    crop_scale: float = 1.65,
    allow_no_face: bool = False,
    matting: Literal["selfie", "alpha", "none"] = "selfie",
    selfie_model: Literal["general", "landscape"] = "general",
    use_alpha: Literal["auto", "ignore", "replace", "multiply"] = "auto",
    pad_mode: Literal["edge", "constant"] = "edge",
) -> int:
    """Crop, matte and frame portrait photos the way the network expects (docs/preprocess.md).

    For each IMAGE writes OUT/<name>.png (matted RGB with the mask as alpha), OUT/<name>_crop.png (before
    matting) and OUT/<name>.json (crop and face boxes in the photo, detector, camera K and viewmat).
    A photo that fails is reported and skipped; the exit status is 1 if any failed.

    Args:
        images: photos (JPEG, PNG, WebP, TIFF, BMP, ...); folders are searched for images, not recursively.
        out: output folder.
        size: output side in pixels.
        crop_scale: crop side / head height (chin to crown); the paper uses ~1.65.
        allow_no_face: when no face is found, crop the centred square of the whole photo instead of failing.
        matting: selfie = MediaPipe person segmentation; alpha = the photo's alpha; none = keep background.
        selfie_model: MediaPipe selfie segmentation model.
        use_alpha: what to do with a photo's alpha channel (auto: use it as the mask when it is not opaque).
        pad_mode: how the crop is filled where it leaves the photo (edge: repeat the border; constant: white).
    """
    config = PreprocessConfig(size=size, crop_scale=crop_scale, allow_no_face=allow_no_face, matting=matting,
                              selfie_model=selfie_model, use_alpha=use_alpha, pad_mode=pad_mode)
    paths: list[Path] = []
    for p in images:
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        else:
            paths.append(p)
    if not paths:
        raise FileNotFoundError("no input images given (or the folders are empty)")
    # Everything the library would log is printed below, once, next to the file it concerns.
    logging.getLogger("perchead.preprocess").setLevel(logging.ERROR)
    results, failures = preprocess_batch(paths, config)
    stems: dict[str, int] = {}
    for r in results:
        stem = Path(r.source).stem
        stems[stem] = stems.get(stem, 0) + 1
        written = r.save(out, stem if stems[stem] == 1 else f"{stem}_{stems[stem]}")
        note = f" ({'; '.join(r.warnings)})" if r.warnings else ""
        print(f"{r.source} -> {written}{note}")
    for name, exc in failures:
        msg = str(exc) if name in str(exc) else f"{name}: {exc}"
        print(f"perchead preprocess: skipped {msg}", file=sys.stderr)
    print(f"{len(results)} preprocessed into {out}, {len(failures)} failed")
    return 1 if failures else 0

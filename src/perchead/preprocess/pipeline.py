"""Photo -> network input: load, detect the face, crop the head square, matte the background."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..geometry import Cameras, input_camera
from .crop import (
    ROLL_MIN_DEG,
    Box,
    centred_square,
    extract_crop,
    eye_roll_deg,
    head_geometry,
    outside_fraction,
    square_box,
)
from .detect import DEFAULT_DETECTORS, detect_faces, detect_faces_tiled, face_mesh_landmarks, refine_keypoints
from .io import DEFAULT_MAX_DECODE_PIXELS, DEFAULT_MAX_PIXELS, ImageInput, SourceImage, open_image
from .matting import composite, person_mask, refine_mask, trim_background

log = logging.getLogger(__name__)


class NoFaceError(ValueError):
    """No detector found a face in the picture."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a photo becomes the network's input (defaults follow docs/design.md section 2)."""

    size: int = 512
    """output side in pixels"""
    crop_scale: float = 1.65
    """crop side / head height (chin to crown): the paper's ~1.65x head box"""
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    """face detectors tried in order until one finds a face"""
    min_face_confidence: float = 0.5
    """MediaPipe detection threshold"""
    refine_landmarks: bool = True
    """re-measure eyes and mouth with MediaPipe Face Mesh on full-resolution pixels"""
    level_eyes: bool = True
    """turn the crop about the eye midpoint so that the eyes are level (FFHQ's alignment): the network, the
    pose estimate and the fit only know upright heads, and a tilted one came out as a second, upright head
    painted with a tilted face"""
    allow_no_face: bool = False
    """when no face is found, crop the centred square of the whole image instead of failing"""
    matting: Literal["selfie", "alpha", "none"] = "selfie"
    """selfie: MediaPipe person segmentation; alpha: the input's alpha channel; none: keep the background"""
    selfie_model: Literal["general", "landscape"] = "general"
    use_alpha: Literal["auto", "ignore", "replace", "multiply"] = "auto"
    """an input alpha channel: auto = replace the segmentation when the alpha is not all opaque"""
    edge_sharpness: float = 2.0
    """mask edge contrast around 0.5 (1 keeps the segmenter's blur)"""
    trim_background: bool = True
    """take background blobs the person segmentation kept (a shirt behind the head, a wall beside a turned
    face) out of its matte again (:func:`~perchead.preprocess.matting.trim_background`)"""
    background: tuple[int, int, int] = (255, 255, 255)
    """colour composited behind the matted head"""
    pad_mode: Literal["edge", "constant"] = "edge"
    """how the crop is filled where it leaves the photo (constant uses ``background``)"""
    detect_max_side: int = 1024
    """faces are detected on a copy downscaled to this longer side"""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """refuse larger images (decompression bombs)"""
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS
    """memory cap for decoding the crop region of a JPEG"""

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        if not 1.0 <= self.crop_scale <= 4.0:
            raise ValueError(f"crop_scale must be in [1, 4] (the paper uses 1.65), got {self.crop_scale}")
        if self.matting not in ("selfie", "alpha", "none"):
            raise ValueError(f"matting must be 'selfie', 'alpha' or 'none', got {self.matting!r}")
        if self.use_alpha not in ("auto", "ignore", "replace", "multiply"):
            raise ValueError(f"use_alpha must be auto, ignore, replace or multiply, got {self.use_alpha!r}")


@dataclass
class Preprocessed:
    """One photo ready for the network. Boxes are (x0, y0, x1, y1) in upright original pixels."""

    image: np.ndarray
    """uint8 [S, S, 3]: the crop matted onto the background colour (the network input)"""
    crop: np.ndarray
    """uint8 [S, S, 3]: the same crop before matting"""
    mask: np.ndarray
    """float32 [S, S] in [0, 1]: foreground alpha"""
    camera: Cameras
    """the standard input camera (perchead.geometry.input_camera): the crop frames the head like it"""
    crop_box: Box
    face_box: Box | None
    head_box: Box | None
    detector: str
    """detector that found the face, or "whole-image" when none did and allow_no_face was set"""
    num_faces: int
    source: str
    original_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)
    roll_deg: float = 0.0
    """the crop is ``crop_box`` turned by this about its centre (counter-clockwise as seen; the eyes' tilt)"""
    trimmed: float = 0.0
    """share of the person mask's alpha that :func:`~perchead.preprocess.matting.trim_background` took out"""

    @property
    def source_side(self) -> float:
        """The crop's side in the photo's own pixels (less than the crop's when a small head was enlarged)."""
        return float(self.crop_box[2] - self.crop_box[0])

    def metadata(self) -> dict:
        """Everything but the pixels, JSON-serialisable."""
        box = lambda b: None if b is None else [float(v) for v in b]  # noqa: E731
        return {
            "source": self.source, "original_size": list(self.original_size),
            "size": int(self.image.shape[0]), "crop_box": box(self.crop_box), "face_box": box(self.face_box),
            "head_box": box(self.head_box), "roll_deg": round(float(self.roll_deg), 3), "detector": self.detector,
            "num_faces": self.num_faces, "trimmed": round(float(self.trimmed), 4), "warnings": list(self.warnings),
            "K": self.camera.Ks[0].tolist(), "viewmat": self.camera.viewmats[0].tolist(),
        }

    def save(self, out_dir: str | Path, stem: str | None = None) -> Path:
        """Write ``<stem>.png`` (matted RGB + mask as alpha), ``<stem>_crop.png`` and ``<stem>.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or Path(self.source).stem
        rgba = np.dstack([self.image, np.clip(self.mask * 255 + 0.5, 0, 255).astype(np.uint8)])
        Image.fromarray(rgba, "RGBA").save(out / f"{stem}.png")
        Image.fromarray(self.crop).save(out / f"{stem}_crop.png")
        (out / f"{stem}.json").write_text(json.dumps(self.metadata(), indent=1))
        return out / f"{stem}.png"


def _config(config: PreprocessConfig | None, overrides: dict) -> PreprocessConfig:
    config = config or PreprocessConfig()
    if overrides:
        names = {f.name for f in fields(PreprocessConfig)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise TypeError(f"unknown preprocessing option(s) {bad}; valid: {sorted(names)}")
        config = replace(config, **overrides)
    return config


def _face_region_keypoints(src: SourceImage, face_box: np.ndarray):
    """Face Mesh keypoints measured on a full-resolution square around the face, in original pixels."""
    side = 2.2 * max(face_box[2] - face_box[0], face_box[3] - face_box[1])
    centre = np.array([(face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2])
    pixels, (x0, y0, x1, y1) = src.region(square_box(centre, side), 384)
    if pixels.shape[2] == 4:
        pixels = composite(pixels, pixels[..., 3] / 255.0)
    k = pixels.shape[1] / (x1 - x0)
    if k > 1.5 or max(pixels.shape[:2]) > 768:  # bring to ~512 px: plenty for the mesh, and cheap
        f = 512 / max(pixels.shape[:2])
        target = (max(1, round(pixels.shape[1] * f)), max(1, round(pixels.shape[0] * f)))
        pixels = np.asarray(Image.fromarray(pixels).resize(target, Image.Resampling.LANCZOS))
        k = pixels.shape[1] / (x1 - x0)
    found = refine_keypoints(pixels[..., :3])
    if found is None:
        return None
    return tuple(p / k + np.array([x0, y0]) for p in found)


def preprocess_image(source: ImageInput, config: PreprocessConfig | None = None, **overrides) -> Preprocessed:
    """One photo (path, numpy array or PIL image) -> :class:`Preprocessed`.

    Options are the fields of :class:`PreprocessConfig`, as a config or keyword overrides. Raises
    :class:`~perchead.preprocess.io.ImageLoadError` for unreadable files, :class:`NoFaceError` when no face is
    found (unless ``allow_no_face``), ``FileNotFoundError`` for missing files.
    """
    cfg = _config(config, overrides)
    src = open_image(source, max_pixels=cfg.max_pixels, max_decode_pixels=cfg.max_decode_pixels)
    notes: list[str] = []

    def warn(msg: str) -> None:
        log.warning("%s: %s", src.name, msg)
        notes.append(msg)

    thumb, scale = src.thumbnail(cfg.detect_max_side)
    # Judge the alpha channel on the whole picture: padding a crop adds transparency of its own.
    has_alpha = thumb.shape[2] == 4 and bool((thumb[..., 3] < 250).any())
    det_rgb = composite(thumb, thumb[..., 3] / 255.0) if thumb.shape[2] == 4 else thumb
    faces, detector = detect_faces(det_rgb, cfg.detectors, cfg.min_face_confidence)
    if not faces and "mediapipe-full" in cfg.detectors:
        # Small faces in big pictures (a group photo, a 20000 px scan): look again, tile by tile, on a copy
        # twice as large. Only MediaPipe, which is fast enough for ~25 tiles.
        big, scale = src.thumbnail(2 * cfg.detect_max_side)
        big = composite(big, big[..., 3] / 255.0) if big.shape[2] == 4 else big
        faces = detect_faces_tiled(big, min_confidence=cfg.min_face_confidence)
        detector = "mediapipe-full-tiled" if faces else None

    face_box = head_box = None
    roll = 0.0
    if not faces:
        if not cfg.allow_no_face:
            raise NoFaceError(
                f"{src.name}: no face found (tried {', '.join(cfg.detectors)}); use a photo where the face "
                "is visible and not tiny, or allow_no_face=True (CLI: --allow-no-face) to crop the centred "
                "square of the whole image"
            )
        crop_box = centred_square(src.size)
        detector = "whole-image"
        warn("no face found: cropped the centred square of the whole image")
    else:
        face = faces[0].transformed(1.0 / scale)
        if len(faces) > 1:
            warn(f"{len(faces)} faces found; using the largest ({face.area ** 0.5:.0f} px)")
        keypoints = (face.right_eye, face.left_eye, face.mouth)
        if cfg.refine_landmarks:
            refined = _face_region_keypoints(src, face.box)
            if refined is not None:
                keypoints = refined
        head = head_geometry(*keypoints)
        if cfg.level_eyes:
            roll = eye_roll_deg(keypoints[0], keypoints[1])
            roll = roll if abs(roll) >= ROLL_MIN_DEG else 0.0  # so roll_deg says what the crop did
        face_box = tuple(float(v) for v in face.box)
        head_box = head.box
        crop_box = square_box(head.centre, cfg.crop_scale * head.height)
        outside = outside_fraction(crop_box, src.size)
        if outside > 0.25:
            warn(f"{outside:.0%} of the crop lies outside the photo and is padded ({cfg.pad_mode})")
        if cfg.crop_scale * head.height < cfg.size / 2:
            warn(f"the head is small ({head.height:.0f} px tall): the {cfg.size} px crop is upsampled "
                 f"{cfg.size / (cfg.crop_scale * head.height):.1f}x and will look soft")

    crop = extract_crop(src, crop_box, cfg.size, cfg.pad_mode, cfg.background, roll)
    rgb = crop[..., :3]
    alpha_in = crop[..., 3].astype(np.float32) / 255.0 if crop.shape[2] == 4 else None

    # Face box in crop pixels: tells the mask refinement which person to keep.
    k = cfg.size / (crop_box[2] - crop_box[0])
    face_in_crop = None if face_box is None else tuple(
        (v - crop_box[i % 2]) * k for i, v in enumerate(face_box))
    if face_in_crop is not None and roll:
        # The box's centre turned with the crop (its size kept: a tilted face's upright box is about as big).
        c, t = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        x, y = (face_in_crop[0] + face_in_crop[2] - cfg.size) / 2, (face_in_crop[1] + face_in_crop[3] - cfg.size) / 2
        moved = (x * c + y * t - x, -x * t + y * c - y)
        face_in_crop = tuple(v + moved[i % 2] for i, v in enumerate(face_in_crop))

    use_alpha = cfg.use_alpha if has_alpha else "ignore"
    trimmed = 0.0
    if cfg.matting == "alpha" and not has_alpha:
        raise ValueError(f"{src.name}: matting='alpha' needs an image with a transparent background (RGBA)")
    if cfg.matting == "none":
        mask = alpha_in if has_alpha and use_alpha != "ignore" else np.ones(rgb.shape[:2], np.float32)
    elif cfg.matting == "alpha" or use_alpha in ("auto", "replace"):
        mask = alpha_in
    else:
        mask = refine_mask(person_mask(rgb, cfg.selfie_model), face_in_crop, cfg.edge_sharpness)
        if cfg.trim_background:
            person = mask
            mask = trim_background(rgb, mask, face_mesh_landmarks(rgb) if faces else None)
            trimmed = 1.0 - float(mask.sum()) / max(float(person.sum()), 1e-6)
        if use_alpha == "multiply":
            mask = mask * alpha_in
    mask = np.asarray(mask, dtype=np.float32)

    if face_in_crop is not None and cfg.matting != "none":
        fx0, fy0, fx1, fy1 = (int(round(v)) for v in face_in_crop)
        face_alpha = mask[max(fy0, 0):max(fy1, 0), max(fx0, 0):max(fx1, 0)]
        if face_alpha.size and float(face_alpha.mean()) < 0.5:
            warn(f"the mask covers only {face_alpha.mean():.0%} of the face box: matting probably failed")

    return Preprocessed(
        image=composite(rgb, mask, cfg.background), crop=np.ascontiguousarray(rgb), mask=mask,
        camera=input_camera(cfg.size), crop_box=tuple(float(v) for v in crop_box), face_box=face_box,
        head_box=head_box, detector=detector or "whole-image", num_faces=len(faces), source=src.name,
        original_size=src.size, warnings=notes, roll_deg=roll, trimmed=trimmed,
    )


def preprocess_batch(sources: Iterable[ImageInput], config: PreprocessConfig | None = None, **overrides,
                     ) -> tuple[list[Preprocessed], list[tuple[str, Exception]]]:
    """Preprocess many photos; a file that fails is reported and skipped, never stops the others.

    Returns (results in input order, [(source, exception), ...] for the failures).
    """
    cfg = _config(config, overrides)  # option errors are the caller's bug: raise them once, up front
    results: list[Preprocessed] = []
    failures: list[tuple[str, Exception]] = []
    for source in sources:
        name = str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"
        try:
            results.append(preprocess_image(source, cfg))
        except Exception as exc:  # one bad photo must not cost the rest of the batch
            log.info("skipping %s: %s", name, exc)
            failures.append((name, exc))
    return results, failures

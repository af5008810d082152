"""Face identity: dlib's face descriptor, shared by the reconstruction's likeness report
(:mod:`perchead.inference.reconstruct`) and the evaluation's identity metric
(:class:`perchead.eval.metrics.DlibIdentityMetric`). It sits with the face detectors it uses, below both."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..losses.base import cosine_distance
from .detect import DETECTORS, detect_faces, dlib_face_score

SAME_PERSON = 0.6
"""dlib's euclidean distance below which two faces are the same person"""
DETECT_SIDE = 256
"""longest side (pixels) of the copy of an image that :class:`DlibFaceEncoder` looks for faces in; the
descriptor still reads the full image. dlib's HOG detector upsamples an image this small once and finds faces
down to ~40 px, and on the 512 px renders of ``perchead reconstruct``'s likeness report it took 0.17 s an image
at full size against 0.04 s here (the descriptor's own 0.14 s is unchanged)"""


class FaceIdentityUnavailable(RuntimeError):
    """dlib or its models do not import here; the message says what to install."""


def _import(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FaceIdentityUnavailable(f"the dlib identity distance needs the `{module}` package, which does not "
                                      f"import here ({exc}); {install}") from exc


class DlibFaceEncoder:
    """dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, 128-D, ships offline).

    Faces are found with the project's detectors (:func:`perchead.preprocess.detect_faces`, dlib's HOG
    detector by default, as face_recognition does), aligned with dlib's 5- or 68-point shape predictor, and
    described without jitter. ``distance="euclidean"`` is dlib's own convention (same person below
    :data:`SAME_PERSON`); ``"cosine"`` gives 1 - cosine similarity. Faces are looked for in a copy of the
    image no larger than ``detect_side`` (:data:`DETECT_SIDE`; None: at full size), then aligned and described
    at full size.
    """

    def __init__(self, distance: Literal["euclidean", "cosine"] = "euclidean", landmarks: Literal[5, 68] = 5,
                 detectors: Sequence[str] = ("dlib",), detect_side: int | None = DETECT_SIDE):
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"dlib identity distance must be 'euclidean' or 'cosine', got {distance!r}")
        if landmarks not in (5, 68):
            raise ValueError(f"dlib landmarks must be 5 or 68, got {landmarks!r}")
        if detect_side is not None and detect_side < 64:
            raise ValueError(f"detect_side must be None or at least 64 pixels, got {detect_side!r}")
        unknown = [d for d in detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown face detector(s) {unknown}; choose from {list(DETECTORS)}")
        dlib = _import("dlib", "`pip install dlib-bin`")
        with warnings.catch_warnings():  # face_recognition_models still imports pkg_resources
            warnings.simplefilter("ignore")
            frm = _import("face_recognition_models", "`pip install face-recognition-models` (and setuptools<81)")
        predictor = (frm.pose_predictor_five_point_model_location() if landmarks == 5
                     else frm.pose_predictor_model_location())
        self._dlib = dlib
        self.shape_predictor = dlib.shape_predictor(predictor)
        self.encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.distance_kind, self.landmarks, self.detectors = distance, landmarks, tuple(detectors)
        self.detect_side = detect_side

    def settings(self) -> dict[str, Any]:
        return {"model": "dlib_face_recognition_resnet_model_v1 (face_recognition_models)",
                "landmarks": f"shape_predictor_{self.landmarks}_face_landmarks",
                "detectors": list(self.detectors),
                "jitters": 0, "face": "largest detected",
                "detected_at": "full size" if self.detect_side is None else f"longest side <= {self.detect_side} px",
                "distance": f"euclidean (dlib: same person < {SAME_PERSON})" if self.distance_kind == "euclidean"
                else "1 - cosine similarity"}

    def detection_copy(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The copy of ``rgb`` that faces are looked for in (no larger than ``detect_side``) and the x and y
        factors from its pixels to the image's."""
        height, width = rgb.shape[:2]
        if self.detect_side is None or max(height, width) <= self.detect_side:
            return rgb, 1.0, 1.0
        shrink = max(height, width) / self.detect_side
        size = (max(1, round(width / shrink)), max(1, round(height / shrink)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        return small, width / size[0], height / size[1]

    def embed(self, rgb: np.ndarray) -> np.ndarray | None:
        """128-D descriptor of the largest face in a C-contiguous uint8 HxWx3 RGB image, None if none found."""
        small, sx, sy = self.detection_copy(rgb)
        faces, _ = detect_faces(small, self.detectors, keypoints=False)  # aligned by its own 5-point predictor
        if not faces:
            return None
        x0, y0, x1, y1 = (int(round(v * s)) for v, s in zip(faces[0].box, (sx, sy, sx, sy), strict=True))
        shape = self.shape_predictor(rgb, self._dlib.rectangle(x0, y0, x1, y1))
        return np.asarray(self.encoder.compute_face_descriptor(rgb, shape, 0), dtype=np.float64)

    def face_score(self, rgb: np.ndarray) -> float | None:
        """dlib's HOG score of the most face-like box in the copy :meth:`embed` looks in
        (:func:`~perchead.preprocess.detect.dlib_face_score`): a number that moves smoothly where
        :meth:`embed`'s "no face" does not."""
        return dlib_face_score(self.detection_copy(rgb)[0])

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        if self.distance_kind == "euclidean":
            return float(np.linalg.norm(a - b))
        return float(cosine_distance(torch.from_numpy(a), torch.from_numpy(b), dim=0))


__all__ = ["DETECT_SIDE", "SAME_PERSON", "DlibFaceEncoder", "FaceIdentityUnavailable"]

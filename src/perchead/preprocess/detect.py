"""Face detection with detectors whose weights ship inside their pip packages (docs/design.md section 4).

Detectors are tried in order until one finds a face:

* ``mediapipe-full`` / ``mediapipe-short``: MediaPipe BlazeFace full-range (faces down to ~5% of the image
  width, e.g. group pictures) and short-range (close selfies); box + 6 keypoints. Fast and robust to pose.
* ``dlib``: dlib's HOG + linear SVM frontal detector, with the 68-point shape predictor from
  ``face_recognition_models`` for eyes and mouth. Slower, frontal only, but independent of MediaPipe.
* ``haar``: OpenCV's frontal-face Haar cascade (bundled with opencv-python 4.x): last resort, box only; its
  eye and mouth positions are fixed fractions of the box.

Each detection is reduced to a :class:`Face`: a box and three keypoints (the subject's right eye, left eye
and mouth centre), which is all the crop geometry needs. :func:`refine_keypoints` replaces the keypoints
with MediaPipe Face Mesh's (478 landmarks, iris centres) measured on full-resolution pixels.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .quiet import native_logs_quiet

log = logging.getLogger(__name__)

DETECTORS = ("mediapipe-full", "mediapipe-short", "dlib", "haar")
DEFAULT_DETECTORS = DETECTORS


@dataclass(frozen=True)
class Face:
    """One detected face in pixel coordinates of the image it was found in.

    ``right_eye``/``left_eye`` are the *subject's* (so ``right_eye`` is on the image's left for a frontal
    face); ``mouth`` is the centre of the lips. All points are (x, y) float arrays.
    """

    box: np.ndarray  # (x0, y0, x1, y1)
    score: float
    right_eye: np.ndarray
    left_eye: np.ndarray
    mouth: np.ndarray
    detector: str

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    def transformed(self, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> Face:
        """The same face in another frame: p' = p * scale + offset."""
        off = np.asarray(offset, dtype=np.float64)
        return replace(
            self,
            box=self.box * scale + np.concatenate([off, off]),
            right_eye=self.right_eye * scale + off,
            left_eye=self.left_eye * scale + off,
            mouth=self.mouth * scale + off,
        )


# ---------------------------------------------------------------------------------------------- MediaPipe
@functools.cache
def _mp_face_detection(model_selection: int, min_confidence: float):
    from mediapipe.python.solutions import face_detection

    with native_logs_quiet():
        return face_detection.FaceDetection(model_selection=model_selection,
                                            min_detection_confidence=min_confidence)


@functools.cache
def _mp_face_mesh():
    from mediapipe.python.solutions import face_mesh

    with native_logs_quiet():
        return face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                  min_detection_confidence=0.3)


def _detect_mediapipe(rgb: np.ndarray, model_selection: int, min_confidence: float) -> list[Face]:
    h, w = rgb.shape[:2]
    with native_logs_quiet():
        result = _mp_face_detection(model_selection, min_confidence).process(np.ascontiguousarray(rgb))
    name = "mediapipe-full" if model_selection == 1 else "mediapipe-short"
    faces = []
    for det in result.detections or []:
        if det.score[0] < min_confidence:  # the graph's own threshold does not always apply it
            continue
        rel = det.location_data.relative_bounding_box
        box = np.array([rel.xmin * w, rel.ymin * h, (rel.xmin + rel.width) * w, (rel.ymin + rel.height) * h])
        # keypoints: 0 right eye, 1 left eye, 2 nose tip, 3 mouth centre, 4/5 ear tragions
        kp = np.array([(p.x * w, p.y * h) for p in det.location_data.relative_keypoints], dtype=np.float64)
        faces.append(Face(box, float(det.score[0]), kp[0], kp[1], kp[3], name))
    return faces


# ------------------------------------------------------------------------------------------------- dlib
@functools.cache
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _dlib_landmarker():
    """dlib's 68-point shape predictor: a 100 MB model, ~0.5 s to load, so loaded only when a face's eyes and
    mouth are asked for."""
    import warnings

    import dlib

    with warnings.catch_warnings():  # face_recognition_models still imports pkg_resources
        warnings.simplefilter("ignore")
        import face_recognition_models

    return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


# SVM margin below which dlib detections are mostly false positives (astronaut's mission patch scores 0.12,
# her face 1.2-1.5).
_DLIB_MIN_SCORE = 0.3


def _dlib_upsample(rgb: np.ndarray) -> int:
    # One upsampling finds faces down to ~40 px; skip it on big images where it only costs time.
    return 1 if max(rgb.shape[:2]) <= 800 else 0


def _detect_dlib(rgb: np.ndarray, keypoints: bool = True) -> list[Face]:
    detector = _dlib_detector()
    rgb = np.ascontiguousarray(rgb)
    rects, scores, _ = detector.run(rgb, _dlib_upsample(rgb), 0.0)
    faces = []
    for rect, score in zip(rects, scores, strict=True):
        if score < _DLIB_MIN_SCORE:
            continue
        box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
        if not keypoints:
            faces.append(Face(box, float(score), *np.full((3, 2), np.nan), "dlib"))
            continue
        shape = _dlib_landmarker()(rgb, rect)
        pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)
        # 68-point scheme: 36-41 the subject's right eye, 42-47 left eye, 48-67 lips.
        eyes_mouth = pts[36:42].mean(0), pts[42:48].mean(0), pts[48:68].mean(0)
        faces.append(Face(box, float(score), *eyes_mouth, "dlib"))
    return faces


def dlib_face_score(rgb: np.ndarray) -> float | None:
    """The highest score dlib's HOG detector gives any box in ``rgb`` (uint8 [H, W, 3], upsampled as
    :func:`detect_faces` does), down to -1: how near a face the image comes, where the detector's verdict
    (a face from :data:`_DLIB_MIN_SCORE` here) only says yes or no. None when it proposes no box at all."""
    rgb = np.ascontiguousarray(rgb)
    _, scores, _ = _dlib_detector().run(rgb, _dlib_upsample(rgb), -1.0)
    return max(scores) if len(scores) else None


# ------------------------------------------------------------------------------------------------- Haar
@functools.cache
def _haar_cascade():
    import cv2

    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's Haar cascade is missing at {path} (OpenCV 5 wheels dropped them)")
    return cascade


# Where eyes and mouth sit inside a Haar frontal-face box (fractions of its width/height), measured on
# skimage's astronaut with MediaPipe Face Mesh; the cascade gives no landmarks of its own.
_HAAR_RIGHT_EYE = (0.29, 0.38)
_HAAR_LEFT_EYE = (0.71, 0.38)
_HAAR_MOUTH = (0.50, 0.86)


def _detect_haar(rgb: np.ndarray) -> list[Face]:
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY))
    min_side = max(24, min(gray.shape) // 20)
    rects, _, weights = _haar_cascade().detectMultiScale3(
        gray, scaleFactor=1.1, minNeighbors=6, minSize=(min_side, min_side), outputRejectLevels=True)
    faces = []
    for (x, y, w, h), weight in zip(rects, np.ravel(weights), strict=True):
        box = np.array([x, y, x + w, y + h], dtype=np.float64)

        def at(frac: tuple[float, float], x=x, y=y, w=w, h=h) -> np.ndarray:
            return np.array([x + frac[0] * w, y + frac[1] * h], dtype=np.float64)

        eyes_mouth = at(_HAAR_RIGHT_EYE), at(_HAAR_LEFT_EYE), at(_HAAR_MOUTH)
        faces.append(Face(box, float(weight), *eyes_mouth, "haar"))
    return faces


# ------------------------------------------------------------------------------------------------- API
def detect_faces(rgb: np.ndarray, detectors: Sequence[str] = DEFAULT_DETECTORS,
                 min_confidence: float = 0.5, keypoints: bool = True) -> tuple[list[Face], str | None]:
    """All faces found by the first detector in ``detectors`` that finds any, largest first.

    ``rgb`` is uint8 [H, W, 3]. Returns (faces, name of the detector that found them) or ([], None).
    ``min_confidence`` applies to MediaPipe (a probability); dlib and Haar use their own default thresholds.
    ``keypoints=False`` is for callers that use only the boxes: dlib then skips its 68-point shape predictor
    (:func:`_dlib_landmarker`) and its faces' eyes and mouth are NaN. A detector whose package cannot be
    imported is skipped with a log message.
    """
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown face detector(s) {unknown}; choose from {list(DETECTORS)}")
    for name in detectors:
        try:
            if name == "mediapipe-full":
                faces = _detect_mediapipe(rgb, 1, min_confidence)
            elif name == "mediapipe-short":
                faces = _detect_mediapipe(rgb, 0, min_confidence)
            elif name == "dlib":
                faces = _detect_dlib(rgb, keypoints)
            else:
                faces = _detect_haar(rgb)
        except ImportError as exc:
            log.warning("face detector %s unavailable (%s); trying the next one", name, exc)
            continue
        if faces:
            return sorted(faces, key=lambda f: f.area, reverse=True), name
    return [], None


def _suppress_duplicates(faces: list[Face], overlap: float = 0.5) -> list[Face]:
    """Drop faces that mostly overlap a better-scoring one (the same face seen from two tiles)."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        duplicate = False
        for other in kept:
            ix = min(face.box[2], other.box[2]) - max(face.box[0], other.box[0])
            iy = min(face.box[3], other.box[3]) - max(face.box[1], other.box[1])
            if ix > 0 and iy > 0 and ix * iy > overlap * min(face.area, other.area):
                duplicate = True
                break
        if not duplicate:
            kept.append(face)
    return kept


# Tiles see many more face-like patches than one whole-image pass: on skimage's rocket and astronaut the
# tiled false positives score 0.63-0.67 and are 14-26 px, a real small face scores 0.86.
TILED_MIN_CONFIDENCE = 0.75
TILED_MIN_FACE_PX = 20


def detect_faces_tiled(rgb: np.ndarray, grid: int = 3, min_confidence: float = 0.5) -> list[Face]:
    """MediaPipe full-range on overlapping square tiles, for faces too small for a whole-image pass.

    BlazeFace sees the whole picture at 192x192, so a face under ~8% of the picture's side is lost; tiles
    of 1/``grid`` of the longer side, overlapping by half, make the same face ``grid`` times larger.
    Stricter than the whole-image pass: confidence >= TILED_MIN_CONFIDENCE, box >= TILED_MIN_FACE_PX.
    """
    min_confidence = max(min_confidence, TILED_MIN_CONFIDENCE)
    h, w = rgb.shape[:2]
    t = int(min(h, w, max(1, round(max(h, w) / grid))))
    faces = []
    for y in _tile_starts(h, t):
        for x in _tile_starts(w, t):
            for face in _detect_mediapipe(rgb[y:y + t, x:x + t], 1, min_confidence):
                if face.area >= TILED_MIN_FACE_PX**2:
                    faces.append(face.transformed(1.0, (x, y)))
    return sorted(_suppress_duplicates(faces), key=lambda f: f.area, reverse=True)


def _tile_starts(length: int, tile: int) -> list[int]:
    if length <= tile:
        return [0]
    n = int(np.ceil((length - tile) / (tile / 2))) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - tile, n)})


def refine_keypoints(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Eyes (iris centres) and mouth centre from MediaPipe Face Mesh on a picture of one face, or None.

    ``rgb`` should be a crop around the face (the mesh model expects the face to fill a good part of it).
    """
    pts = face_mesh_landmarks(rgb)
    if pts is None:
        return None
    # 468 / 473: the subject's right / left iris centre; 13 / 14: inner upper / lower lip.
    return pts[468], pts[473], (pts[13] + pts[14]) / 2


def landmark_ring(connections) -> list[int]:
    """Order the edges of a closed Face Mesh contour (e.g. ``FACEMESH_FACE_OVAL``) into a polygon: a list of
    landmark ids."""
    nxt: dict[int, int] = {}
    for a, b in connections:
        nxt.setdefault(a, b)
    start = next(iter(nxt))
    ring, cur = [start], nxt[start]
    while cur != start and cur in nxt and len(ring) <= len(nxt):
        ring.append(cur)
        cur = nxt[cur]
    return ring


def fill_polygon(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """[H, W] bool mask of the polygon through ``points`` [M, 2] (x, y pixels)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([tuple(map(float, p)) for p in points], fill=1)
    return np.asarray(img, dtype=bool)


def face_oval_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[H, W] bool mask inside Face Mesh's face oval, from its 478 landmarks ``points`` [478, 2]."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    return fill_polygon(shape, points[landmark_ring(fmc.FACEMESH_FACE_OVAL)])


def face_mesh_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """[478, 2] pixel positions of MediaPipe Face Mesh's landmarks (with irises) of the one face in ``rgb``,
    or None when it finds none (or MediaPipe is not installed)."""
    try:
        with native_logs_quiet():
            result = _mp_face_mesh().process(np.ascontiguousarray(rgb))
    except ImportError:
        return None
    if not result.multi_face_landmarks:
        return None
    h, w = rgb.shape[:2]
    return np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)

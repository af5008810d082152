"""Background matting of the head crop.

MediaPipe Selfie Segmentation (weights inside the mediapipe wheel) gives a soft person mask at 256x256
("general", model 0) or 256x144 ("landscape", model 1). Its raw output has stray blobs (a flag, a chair)
and a blurry, upsampled edge; :func:`refine_mask` keeps only the person whose face we crop, fills holes, and
sharpens the edge while keeping it soft over a few pixels so the composite has no jaggies.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from .quiet import native_logs_quiet

SELFIE_MODELS = {"general": 0, "landscape": 1}


@functools.cache
def _selfie_segmenter(model_selection: int):
    from mediapipe.python.solutions import selfie_segmentation

    with native_logs_quiet():
        return selfie_segmentation.SelfieSegmentation(model_selection=model_selection)


def person_mask(rgb: np.ndarray, model: str = "general") -> np.ndarray:
    """Soft person mask float32 [H, W] in [0, 1] for a uint8 RGB image."""
    if model not in SELFIE_MODELS:
        raise ValueError(f"unknown selfie segmentation model {model!r}; choose from {list(SELFIE_MODELS)}")
    with native_logs_quiet():
        result = _selfie_segmenter(SELFIE_MODELS[model]).process(np.ascontiguousarray(rgb[..., :3]))
    return np.clip(np.asarray(result.segmentation_mask, dtype=np.float32), 0.0, 1.0)


def refine_mask(soft: np.ndarray, face_box: tuple[float, float, float, float] | None = None,
                edge_sharpness: float = 2.0, edge_px: int = 3) -> np.ndarray:
    """Clean a soft segmentation: one component, no holes, a sharp but antialiased edge.

    * threshold at 0.5 and keep the component covering most of ``face_box`` (pixels of the mask's
      frame; the largest component when no box is given or nothing covers it);
    * fill enclosed holes (an open mouth, glasses frames);
    * alpha = 1 deep inside, 0 far outside, and within ``edge_px`` of the boundary the soft value pushed
      away from 0.5 by ``edge_sharpness`` (1 keeps the model's blur).
    """
    binary = soft >= 0.5
    labels, n = ndimage.label(binary)
    if n == 0:
        return np.zeros_like(soft, dtype=np.float32)
    keep_label = None
    if face_box is not None:
        h, w = soft.shape
        x0, y0 = max(0, int(face_box[0])), max(0, int(face_box[1]))
        x1, y1 = min(w, int(np.ceil(face_box[2]))), min(h, int(np.ceil(face_box[3])))
        inside = labels[y0:y1, x0:x1]
        counts = np.bincount(inside.ravel(), minlength=n + 1)[1:] if inside.size else np.zeros(n)
        if counts.max(initial=0) > 0:
            keep_label = int(np.argmax(counts)) + 1
    if keep_label is None:
        keep_label = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    keep = ndimage.binary_fill_holes(labels == keep_label)
    inner = ndimage.binary_erosion(keep, iterations=edge_px, border_value=1)
    near = ndimage.binary_dilation(keep, iterations=edge_px)
    edge = np.clip((soft - 0.5) * edge_sharpness + 0.5, 0.0, 1.0)
    # Filled holes deep inside are in ``inner`` and so opaque, whatever the model scored them.
    alpha = np.where(inner, 1.0, np.where(near, edge, 0.0))
    return alpha.astype(np.float32)


def composite(rgb: np.ndarray, alpha: np.ndarray,
              background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``rgb * alpha + background * (1 - alpha)`` as uint8 [H, W, 3]."""
    a = alpha[..., None].astype(np.float32)
    out = rgb[..., :3].astype(np.float32) * a + np.asarray(background, np.float32) * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

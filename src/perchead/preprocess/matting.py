"""Background matting of the head crop.

MediaPipe Selfie Segmentation (weights inside the mediapipe wheel) gives a soft person mask at 256x256
("general", model 0) or 256x144 ("landscape", model 1). Its raw output has stray blobs (a flag, a chair)
and a blurry, upsampled edge; :func:`refine_mask` keeps only the person whose face we crop, fills holes, and
sharpens the edge while keeping it soft over a few pixels so the composite has no jaggies.

A person mask is not a head mask: it keeps a second person's shirt behind the head, and a wall the colour of
skin beside a turned face. :func:`trim_background` takes such blobs out again with OpenCV's GrabCut (colour
models of the person and of the background, seeded by the matte and the face's landmarks).
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


def largest_label(labels: np.ndarray) -> int:
    """The label of the largest component of ``ndimage.label``'s output (which has at least one)."""
    return int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


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
        keep_label = largest_label(labels)
    keep = ndimage.binary_fill_holes(labels == keep_label)
    inner = ndimage.binary_erosion(keep, iterations=edge_px, border_value=1)
    near = ndimage.binary_dilation(keep, iterations=edge_px)
    edge = np.clip((soft - 0.5) * edge_sharpness + 0.5, 0.0, 1.0)
    # Filled holes deep inside are in ``inner`` and so opaque, whatever the model scored them.
    alpha = np.where(inner, 1.0, np.where(near, edge, 0.0))
    return alpha.astype(np.float32)


TRIM_MIN_WIDTH = 0.03
"""a blob the trim takes out is at least this wide (share of the crop): thinner slivers along the matte's edge
are where GrabCut's hard cut and the matte's soft edge disagree, not background, and stay"""
TRIM_MIN_AREA = 0.01
"""and covers at least this share of the crop: a bite out of the hair or the collar is more often GrabCut's error
than background, and the fit downstream answers even a small change of the matte with a different camera"""
TRIM_BELOW_CHIN = 0.25
"""the trim reaches this far below the chin (share of the face's height, forehead to chin)"""
FAR_SIDE_TURN = 0.15
"""how far the nose tip sits from the middle of the face's landmarks (share of their width) for the face to
count as turned: beside a turned face's far cheek there is only background (or hair) at the face's height"""


def trim_background(rgb: np.ndarray, alpha: np.ndarray, landmarks: np.ndarray | None,
                    iterations: int = 4) -> np.ndarray:
    """``alpha`` without the background blobs a person segmenter keeps (float32 [H, W]; never adds).

    GrabCut (``cv2.grabCut``, at half resolution) is seeded with: sure foreground in the face (the hull of the
    Face Mesh ``landmarks`` [478, 2], pixels) and deep inside the matte; probable foreground in the rest of
    the matte; probable background in a ring around it and, on a turned face, beside the far cheek between
    the eyes and the chin; sure background beyond. What it calls background inside the matte below the top of
    the forehead and down to :data:`TRIM_BELOW_CHIN` below the chin, opened by a disc of :data:`TRIM_MIN_WIDTH`
    (slivers stay), in blobs of at least :data:`TRIM_MIN_AREA` of the crop, is taken out with a soft edge,
    and so is what that leaves cut off from the head."""
    import cv2

    h, w = alpha.shape
    small = np.ascontiguousarray(rgb[::2, ::2, :3][..., ::-1])  # BGR, as OpenCV's GrabCut models colours
    sh, sw = small.shape[:2]
    fg = alpha[::2, ::2] >= 0.5
    if not fg.any() or fg.all():
        return alpha
    ring = int(round(0.025 * sw))
    labels = np.full((sh, sw), cv2.GC_BGD, np.uint8)
    labels[ndimage.binary_dilation(fg, iterations=ring)] = cv2.GC_PR_BGD
    labels[fg] = cv2.GC_PR_FGD
    far = np.zeros_like(fg)
    face = np.zeros((sh, sw), np.uint8)
    if landmarks is not None:
        pts = landmarks / 2.0
        cv2.fillConvexPoly(face, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
        lo, hi = pts[:, 0].min(), pts[:, 0].max()
        turn = (pts[1, 0] - (lo + hi) / 2) / max(hi - lo, 1e-6)  # landmark 1 is the nose tip
        if abs(turn) >= FAR_SIDE_TURN:
            # from the eyes (468 / 473: the irises) to the chin (152), beyond the face's hull on the nose's side
            top, bottom = int(max(0, min(pts[468, 1], pts[473, 1]))), int(min(sh, pts[152, 1]))
            margin = int(round(0.01 * sw))
            for y in range(top, bottom):
                xs = np.nonzero(face[y])[0]
                if len(xs):
                    if turn < 0:
                        far[y, :max(xs.min() - margin, 0)] = True
                    else:
                        far[y, xs.max() + margin:] = True
            labels[far & fg] = cv2.GC_PR_BGD
    core = ndimage.binary_erosion(fg, iterations=2 * ring, border_value=1) & ~far
    labels[core | (face > 0)] = cv2.GC_FGD
    if not (labels == cv2.GC_FGD).any():
        return alpha
    models = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's global RNG: the same photo, the same matte
    cv2.grabCut(small, labels, None, *models, iterations, cv2.GC_INIT_WITH_MASK)
    out = fg & ((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD))
    if landmarks is not None:
        # Above the hairline (10: the top of Face Mesh's forehead) is hair or a hat, which GrabCut confuses
        # with a background of its colour (a blonde's crown against a beige wall); a person segmenter's misses
        # are beside and below the face: another person, a wall beside a turned face.
        out[:max(int(pts[10, 1]), 0)] = False
        # Below the chin is clothing, whose metal and white parts GrabCut also takes for a grey backdrop; the
        # fit frees the neck for it anyway (FitConfig.free_regions).
        out[max(int(pts[152, 1] + TRIM_BELOW_CHIN * (pts[152, 1] - pts[10, 1])), 0):] = False
    width = max(1, int(round(TRIM_MIN_WIDTH * sw)))
    disc = np.hypot(*np.mgrid[-width // 2:width // 2 + 1, -width // 2:width // 2 + 1]) <= width / 2
    out = ndimage.binary_opening(out, structure=disc)
    blobs, n = ndimage.label(out)
    if n:
        big = np.flatnonzero(np.bincount(blobs.ravel())[1:] >= TRIM_MIN_AREA * out.size) + 1
        out = np.isin(blobs, big)
    if not out.any():
        return alpha
    full = np.repeat(np.repeat(out, 2, 0), 2, 1)[:h, :w].astype(np.float32)
    full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
    soft = np.clip(ndimage.gaussian_filter(full, 1.0) * 2.0, 0.0, 1.0)  # its whole blob, and a 1-2 px fade
    trimmed = alpha * (1.0 - soft)
    # what a cut leaves beyond the blob, cut off from the head, goes with it (one person, as refine_mask keeps)
    parts, n = ndimage.label(trimmed >= 0.5)
    if n > 1:
        head = largest_label(parts)
        trimmed[(parts != head) & (parts > 0)] = 0.0
    return trimmed.astype(np.float32)


def composite(rgb: np.ndarray, alpha: np.ndarray,
              background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``rgb * alpha + background * (1 - alpha)`` as uint8 [H, W, 3]."""
    a = alpha[..., None].astype(np.float32)
    out = rgb[..., :3].astype(np.float32) * a + np.asarray(background, np.float32) * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

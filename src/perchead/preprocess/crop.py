"""Head box and square crop geometry.

The paper crops a square ~1.65x the head box (docs/design.md section 2). The project's standard input camera
(``perchead.geometry.input_camera``: 1.5 m from the head centre, 15 degree field of view) frames a head of
~0.24 m chin to crown at exactly that ratio, looking at the canonical origin, which the template head
(``perchead.geometry.head_surface.HeadShape``) puts at eye height on the face's midline. Synthetic renders
and training views see heads through that camera, so a photo crop must reproduce its framing: eyes at the
centre, and the face at the size the camera shows the template's average face.

Face boxes differ between detectors and cut the head at the forehead, so the crop is derived from three
keypoints every detector gives (eyes and mouth):

* ``s = max(|left_eye - right_eye|, |mouth - eye_midpoint|)`` in pixels; the larger one is kept because
  turning the head (yaw) shortens the first and nodding (pitch) the second. On the template it is
  ``TEMPLATE_S_M`` = max(64 mm pupil distance, 68 mm eyes to mouth).
* those features sit ``TEMPLATE_EYE_DEPTH_M`` in front of the head centre, where the input camera's frame
  is ``FACE_FRAME_M`` = 2 (1.5 - 0.09) tan(7.5 deg) = 0.371 m tall; so the crop side that reproduces the
  camera is ``s * FACE_FRAME_M / TEMPLATE_S_M`` (5.46 s), centred on the eye midpoint;
* the head box is that crop divided by the paper's 1.65: height ``HEAD_HEIGHT_PER_S * s`` (3.31 s),
  centred on the eyes too (the template's chin and crown are 115 and 117 mm from eye height). A
  ``crop_scale`` other than 1.65 scales the crop around the same centre.

On ``skimage.data.astronaut()`` the head box bottom lands within 2 px of her chin; its top is ~14 px below
her (voluminous) hair, which the crop still contains with a wide margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS
from .io import SourceImage

# The template's average face (HeadShape defaults; tests/test_preprocess.py checks they still agree).
TEMPLATE_EYE_DISTANCE_M = 0.064
TEMPLATE_EYE_TO_MOUTH_M = 0.068
TEMPLATE_EYE_DEPTH_M = 0.09  # eyes and mouth in front of the head centre (forehead at 0.097)
TEMPLATE_S_M = max(TEMPLATE_EYE_DISTANCE_M, TEMPLATE_EYE_TO_MOUTH_M)
PAPER_CROP_SCALE = 1.65
FACE_FRAME_M = 2 * (HEAD_CAMERA_RADIUS - TEMPLATE_EYE_DEPTH_M) * math.tan(math.radians(HEAD_CAMERA_FOV_DEG) / 2)
HEAD_HEIGHT_PER_S = FACE_FRAME_M / (PAPER_CROP_SCALE * TEMPLATE_S_M)
HEAD_WIDTH_RATIO = 0.8  # head box width / height, for reporting and drawing only (the crop is square)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class HeadGeometry:
    centre: np.ndarray  # (x, y) pixels: the eye midpoint, where the input camera looks
    height: float  # chin to crown, pixels (the head the input camera frames at 1/1.65 of its height)

    @property
    def box(self) -> Box:
        """Axis-aligned head box (x0, y0, x1, y1) around the centre."""
        cx, cy = self.centre
        hw, hh = 0.5 * HEAD_WIDTH_RATIO * self.height, 0.5 * self.height
        return (float(cx - hw), float(cy - hh), float(cx + hw), float(cy + hh))


def head_geometry(right_eye: np.ndarray, left_eye: np.ndarray, mouth: np.ndarray) -> HeadGeometry:
    """Head centre (the eye midpoint) and chin-to-crown height from the eyes and mouth centre (pixels)."""
    eye_mid = (np.asarray(right_eye, float) + np.asarray(left_eye, float)) / 2
    eye_to_mouth = np.asarray(mouth, float) - eye_mid
    eye_dist = float(np.linalg.norm(np.asarray(left_eye, float) - np.asarray(right_eye, float)))
    s = max(eye_dist, float(np.linalg.norm(eye_to_mouth)))
    if s < 1e-6:
        raise ValueError("degenerate face keypoints: eyes and mouth coincide")
    return HeadGeometry(eye_mid, HEAD_HEIGHT_PER_S * s)


def square_box(centre: np.ndarray, side: float) -> Box:
    cx, cy = float(centre[0]), float(centre[1])
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def centred_square(size: tuple[int, int]) -> Box:
    """The largest centred square inside a (width, height) image (the "whole image" crop)."""
    w, h = size
    side = min(w, h)
    return square_box(np.array([w / 2, h / 2]), side)


def outside_fraction(box: Box, size: tuple[int, int]) -> float:
    """Fraction of the box's area that lies outside a (width, height) image."""
    w, h = size
    ix = max(0.0, min(box[2], w) - max(box[0], 0.0))
    iy = max(0.0, min(box[3], h) - max(box[1], 0.0))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return 1.0 - ix * iy / area


def eye_roll_deg(right_eye: np.ndarray, left_eye: np.ndarray) -> float:
    """The in-plane tilt of the eye line, degrees: positive when the person's left eye (on the image's right)
    is lower in the picture. :func:`extract_crop` with this ``roll_deg`` levels the eyes."""
    d = np.asarray(left_eye, float) - np.asarray(right_eye, float)
    return float(math.degrees(math.atan2(d[1], d[0])))


ROLL_MIN_DEG = 0.5
"""tilts below this are not undone by the preprocessing (a resampling for less than 2 px at the crop's
corners)"""


def extract_crop(source: SourceImage, box: Box, size: int, pad_mode: str = "edge",
                 pad_value: tuple[int, int, int] = (255, 255, 255), roll_deg: float = 0.0) -> np.ndarray:
    """The square ``box`` of the upright source resampled to ``size`` x ``size`` (uint8, 3 or 4 channels),
    turned about its centre by ``roll_deg`` (:func:`eye_roll_deg`) so that a tilted head comes out upright,
    as FFHQ's alignment levels the eyes: the network and the templates only know upright heads.

    Only the part of the box inside the image is decoded (at the resolution the output needs); the rest is
    padded, ``edge`` (repeat the border pixels: the body and backdrop continue naturally, which the person
    segmenter handles better than a hard frame) or ``constant`` (``pad_value``, alpha 0). The resize is
    Lanczos over the exact fractional box, so downscaling is properly antialiased.
    """
    if pad_mode not in ("edge", "constant"):
        raise ValueError(f"pad_mode must be 'edge' or 'constant', got {pad_mode!r}")
    if roll_deg:
        # The upright square that holds the turned one, turned, then its centre cut out.
        turn = math.radians(roll_deg)
        grow = abs(math.cos(turn)) + abs(math.sin(turn))
        big = math.ceil(size * grow / 2) * 2 + 2
        side = (box[2] - box[0]) * big / size
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        pixels = extract_crop(source, square_box(centre, side), big, pad_mode, pad_value)
        off = (big - size) / 2
        im = Image.fromarray(pixels).rotate(roll_deg, resample=Image.Resampling.BICUBIC)
        return np.asarray(im.crop((off, off, off + size, off + size)))
    pixels, (cx0, cy0, cx1, cy1) = source.region(box, size)
    k = pixels.shape[1] / (cx1 - cx0)  # region pixels per source pixel (< 1 for JPEG draft decodes)
    pad_l = max(0, math.ceil((cx0 - box[0]) * k))
    pad_t = max(0, math.ceil((cy0 - box[1]) * k))
    pad_r = max(0, math.ceil((box[2] - cx1) * k))
    pad_b = max(0, math.ceil((box[3] - cy1) * k))
    if pad_l or pad_t or pad_r or pad_b:
        widths = ((pad_t, pad_b), (pad_l, pad_r), (0, 0))
        if pad_mode == "edge":
            pixels = np.pad(pixels, widths, mode="edge")
        else:
            fill = list(pad_value) + ([0] if pixels.shape[2] == 4 else [])
            pixels = np.stack([np.pad(pixels[..., c], widths[:2], constant_values=fill[c])
                               for c in range(pixels.shape[2])], axis=-1)
    # The box in the padded array's pixel units.
    ox, oy = cx0 - pad_l / k, cy0 - pad_t / k
    rbox = ((box[0] - ox) * k, (box[1] - oy) * k, (box[2] - ox) * k, (box[3] - oy) * k)
    im = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=rbox))

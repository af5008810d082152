"""Robust image loading for photo preprocessing.

A :class:`SourceImage` is an opened picture (file, numpy array or PIL image) that hands out

* a small copy for face detection (:meth:`SourceImage.thumbnail`), and
* full-resolution pixels of one region (:meth:`SourceImage.region`) for the final crop,

without ever holding more of a huge image in memory than those two need. JPEGs are decoded with PIL's
``draft()`` (the decoder's own 1/2, 1/4, 1/8 DCT scaling, so a 20000x20000 JPEG is never expanded to
1.2 GB of RGB for a 1024 px detection copy); other formats are decoded once and reduced with
``Image.reduce``. Every coordinate this module talks about is in the *oriented* frame, i.e. after the EXIF
orientation has been applied, whatever the stored pixel order is.

Anything wrong with a file (empty, truncated, corrupt, not an image, absurdly large) raises
:class:`ImageLoadError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Above this many pixels an image is refused as a likely decompression bomb. PIL's own guard only warns at
# ~89 Mpx and fails with an opaque DecompressionBombError at ~179 Mpx, which would refuse honest 20000x20000
# scans; 500 Mpx lets those through and still stops a 100000x100000 header from allocating 30 GB.
DEFAULT_MAX_PIXELS = 500_000_000

# The crop decode never expands more than this many pixels at once (JPEG only, via draft scaling): ~450 MB
# of RGB. A crop that would need more is taken at the largest JPEG scale that fits and reported.
DEFAULT_MAX_DECODE_PIXELS = 150_000_000

ImageInput = str | os.PathLike | np.ndarray | Image.Image


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message names the file and what is wrong with it."""


# EXIF orientation tag -> the PIL transpose that makes the image upright (ImageOps.exif_transpose's table).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112

_pil_limit_lock = threading.Lock()


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Switch PIL's global decompression-bomb guard off while we apply our own, clearer one."""
    with _pil_limit_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def oriented_to_raw_box(box: tuple[int, int, int, int], orientation: int,
                        raw_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Map a box (x0, y0, x1, y1) in the upright frame back to the stored pixel frame.

    ``raw_size`` is the stored (width, height). Cropping the stored image at the returned box and applying
    the orientation's transpose gives exactly the upright image cropped at ``box``.
    """
    x0, y0, x1, y1 = box
    w, h = raw_size
    if orientation == 2:
        return w - x1, y0, w - x0, y1
    if orientation == 3:
        return w - x1, h - y1, w - x0, h - y0
    if orientation == 4:
        return x0, h - y1, x1, h - y0
    if orientation == 5:  # transpose: upright (x, y) = raw (y, x)
        return y0, x0, y1, x1
    if orientation == 6:  # raw rotated clockwise: upright (x, y) = raw (y, h - x)
        return y0, h - x1, y1, h - x0
    if orientation == 7:  # transverse: upright (x, y) = raw (w - y, h - x)
        return w - y1, h - x1, w - y0, h - x0
    if orientation == 8:  # raw rotated counter-clockwise: upright (x, y) = raw (w - y, x)
        return w - y1, x0, w - y0, x1
    return box


# First bytes of files people upload by mistake -> what to call them (the message is read by people, so it
# names a kind of file rather than quoting bytes).
_NOT_IMAGES = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
               (b"\x1f\x8b", "a gzip archive"), (b"ftyp", "a video or HEIC file"),
               (b"RIFF", "a RIFF file (audio or video)"),
               (b"ID3", "an MP3 file"), (b"<svg", "an SVG drawing"), (b"<?xml", "an XML file"),
               (b"<!doctype html", "a web page"), (b"<html", "a web page"))


def _looks_like(head: bytes) -> str:
    """What a file that is no image seems to be, from its first bytes, for the error message."""
    lower = head.lstrip().lower()
    for magic, kind in _NOT_IMAGES:
        if lower.startswith(magic.lower()) or (magic == b"ftyp" and head[4:8] == b"ftyp"):
            return f"it looks like {kind}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # the 512 bytes may end inside a character
        text = head[:exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "it looks like a text file"
    return "its first bytes match no image format"


def _describe_failure(path: Path, exc: BaseException) -> str:
    """One sentence saying what is wrong with a file PIL could not decode."""
    text = str(exc)
    if isinstance(exc, Image.UnidentifiedImageError):
        with open(path, "rb") as f:
            head = f.read(512)
        return (f"{path}: not a recognised image file ({_looks_like(head)}); supported formats include "
                "JPEG, PNG, WebP, TIFF, BMP and GIF")
    if "truncated" in text:
        return f"{path}: the image data is truncated (the file ends early: {text}); re-download or re-save it"
    return f"{path}: the image data is corrupt ({type(exc).__name__}: {text})"


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit "RGB" or "RGBA", scaling 16-bit and float data instead of clipping it."""
    mode = im.mode
    if mode in ("RGB", "RGBA"):
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        data = np.asarray(im)
        if mode.startswith("I;16"):
            scaled = data.astype(np.float32) / 257.0
        elif mode == "F" and np.nanmax(data, initial=0.0) <= 1.0:
            scaled = data.astype(np.float32) * 255.0  # float images in [0, 1]
        elif data.max(initial=0) > 255:
            scaled = data.astype(np.float32) / 257.0  # 32-bit containers of 16-bit samples (PNG "I")
        else:
            scaled = data.astype(np.float32)
        gray = np.clip(np.nan_to_num(scaled) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        try:
            from io import BytesIO

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile is common; the naive conversion below is still usable
            pass
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    return im.convert("RGB")


def array_to_pil(array: np.ndarray, name: str = "<array>") -> Image.Image:
    """A numpy image (HxW, HxWx1/3/4; uint8, uint16, bool or float in [0, 1]) -> 8-bit RGB/RGBA PIL image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2]) == 0:
        raise ImageLoadError(f"{name}: expected an image array of shape HxW, HxWx3 or HxWx4, got {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = np.round(a.astype(np.float32) / 257.0).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageLoadError(f"{name}: the image array contains NaN or infinite values")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255).astype(np.uint8)
    else:
        raise ImageLoadError(f"{name}: unsupported image array dtype {a.dtype}")
    if a.ndim == 2:
        return Image.fromarray(a, "L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA")


@dataclass
class SourceImage:
    """An opened image, upright (EXIF applied), that decodes only what each step needs.

    Build it with :func:`open_image`. ``size`` is the upright (width, height) at full resolution.
    """

    name: str
    size: tuple[int, int]
    orientation: int
    path: Path | None = None
    # Decoded 8-bit RGB/RGBA in the *stored* pixel order; kept for non-JPEG files and in-memory inputs.
    _decoded: Image.Image | None = None
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS

    @property
    def is_lazy_jpeg(self) -> bool:
        return self._decoded is None

    def _raw_size(self) -> tuple[int, int]:
        w, h = self.size
        return (h, w) if self.orientation in _SWAPS_AXES else (w, h)

    def _decode(self, min_scale_size: tuple[int, int] | None = None) -> Image.Image:
        """The stored image as 8-bit RGB(A); for JPEGs reduced by the decoder to about ``min_scale_size``."""
        if self._decoded is not None:
            return self._decoded
        assert self.path is not None
        im = None
        try:
            with _own_pixel_limit():
                im = Image.open(self.path)
                if min_scale_size is not None:
                    im.draft(None, min_scale_size)  # JPEG DCT scaling: never decodes the full size
                im.load()  # closes the file once the pixels are in
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            if im is not None:
                im.close()
            raise ImageLoadError(_describe_failure(self.path, exc)) from exc
        return _to_rgb8(im)

    def _upright(self, im: Image.Image) -> Image.Image:
        method = _ORIENTATION_TRANSPOSE.get(self.orientation)
        return im if method is None else im.transpose(method)

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """Upright uint8 [h, w, 3|4] copy whose longer side is at most ``max_side``, and its scale (<= 1)."""
        w, h = self._raw_size()
        factor = max(w, h) / max_side
        im = self._decode((max(1, int(w / factor)), max(1, int(h / factor))) if factor > 1 else None)
        reduce = int(max(im.size) // max_side)
        if reduce >= 2:
            im = im.reduce(reduce)  # box filter in C: cheap antialiasing before the exact resize
        if max(im.size) > max_side:
            f = max_side / max(im.size)
            target = (max(1, round(im.size[0] * f)), max(1, round(im.size[1] * f)))
            im = im.resize(target, Image.Resampling.BOX)
        im = self._upright(im)
        return np.asarray(im), im.size[0] / self.size[0]

    def region(self, box: tuple[float, float, float, float], min_side: int) -> tuple[np.ndarray, tuple]:
        """Pixels of the upright image inside ``box`` (clipped to the image) at enough resolution for a
        ``min_side`` output; returns uint8 [h, w, 3|4] and the upright full-resolution box they cover.

        JPEGs are decoded at the coarsest DCT scale (1, 1/2, 1/4, 1/8) that still gives ``min_side`` pixels
        across the box, and never at more than ``max_decode_pixels``.
        """
        W, H = self.size
        x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x1, y1 = min(W, math.ceil(box[2])), min(H, math.ceil(box[3]))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{self.name}: crop box {box} lies outside the {W}x{H} image")
        rw, rh = self._raw_size()
        if self._decoded is not None:
            im = self._decoded
        else:
            side = max(box[2] - box[0], box[3] - box[1])
            scale = 1
            while scale < 8 and side / (scale * 2) >= min_side:
                scale *= 2
            while scale < 8 and (rw / scale) * (rh / scale) > self.max_decode_pixels:
                scale *= 2
            im = self._decode((max(1, rw // scale), max(1, rh // scale)))
        sx, sy = im.size[0] / rw, im.size[1] / rh
        rx0, ry0, rx1, ry1 = oriented_to_raw_box((x0, y0, x1, y1), self.orientation, (rw, rh))
        raw_box = (math.floor(rx0 * sx), math.floor(ry0 * sy), math.ceil(rx1 * sx), math.ceil(ry1 * sy))
        raw_crop = im.crop(raw_box)
        return np.asarray(self._upright(raw_crop)), (x0, y0, x1, y1)


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{name}: the image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageLoadError(
            f"{name}: the image is {w}x{h} = {w * h / 1e6:.0f} Mpx, above the limit of "
            f"{max_pixels / 1e6:.0f} Mpx "
            "(a likely decompression bomb or a mistaken file); downscale it first, or raise max_pixels if it "
            "is genuine and you have the memory"
        )


def open_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> SourceImage:
    """Open a file path, numpy array or PIL image for preprocessing.

    Reads only the header of a file (pixels are decoded lazily); raises :class:`ImageLoadError` for files
    that are empty, not images, truncated, corrupt or too large, and ``FileNotFoundError`` for missing ones.
    """
    if isinstance(source, np.ndarray):
        im = array_to_pil(source)
        return SourceImage("<array>", im.size, 1, None, im, max_decode_pixels)
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "<PIL image>"
        _check_pixels(name, source.size, max_pixels)
        try:
            upright = ImageOps.exif_transpose(source)
            upright.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            msg = f"{name}: cannot decode the PIL image ({type(exc).__name__}: {exc})"
            raise ImageLoadError(msg) from exc
        im = _to_rgb8(upright)
        return SourceImage(name, im.size, 1, None, im, max_decode_pixels)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path, numpy array or PIL image, got {type(source).__name__}")

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: the file is empty (0 bytes)")
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            raw_size = im.size
            fmt = im.format
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # unreadable EXIF blocks are common in phone pictures; the pixels are fine
                orientation = 1
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(_describe_failure(path, exc)) from exc
    orientation = orientation if orientation in _ORIENTATION_TRANSPOSE else 1
    size = (raw_size[1], raw_size[0]) if orientation in _SWAPS_AXES else raw_size
    _check_pixels(str(path), size, max_pixels)
    src = SourceImage(str(path), size, orientation, path, None, max_decode_pixels)
    if fmt != "JPEG":
        # Only JPEG decoders can scale while decoding; everything else is decoded once, here, so corrupt
        # data is reported at open time and later steps reuse the pixels.
        src._decoded = src._decode()
    return src


def load_image(source: ImageInput, max_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convenience: the upright image as uint8 [H, W, 3|4] (downscaled to ``max_side`` if given)."""
    src = open_image(source, max_pixels=max_pixels)
    if max_side is None:
        W, H = src.size
        return src.region((0, 0, W, H), max(W, H))[0]
    return src.thumbnail(max_side)[0]

"""Images, grids and videos out, every file written atomically (complete or not at all).

Videos go through imageio-ffmpeg, which ships its own ffmpeg binary in the wheel (nothing to install on
the system) and takes frames one at a time, so a long turntable never has to sit in memory. MP4s are
H.264 / yuv420p, the combination every browser, phone and slide deck plays; yuv420p needs even frame
sizes, so odd sizes are padded by repeating the last row/column rather than rescaled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_output

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".gif")


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] (clipped) or uint8 -> uint8 numpy, same shape."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {image.dtype}")
    return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rgb_frame(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    frame = to_uint8(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise ValueError(f"a frame must be [H, W, 3] (or gray / RGBA), got shape {frame.shape}")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


def _pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def check_video_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: unsupported video format {path.suffix!r}; use one of "
                         f"{', '.join(VIDEO_SUFFIXES)}")
    return path


def check_image_path(path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{path}: unsupported image format {path.suffix!r}; use .png or .jpg")
    return path


def write_video(frames: Iterable[np.ndarray | torch.Tensor], path: str | os.PathLike, fps: float = 30.0,
                quality: float = 8.0) -> int:
    """Write frames ([T, H, W, 3] or any iterable of [H, W, 3], float in [0, 1] or uint8) as a video.

    ``.mp4``/``.mov``/``.mkv`` are H.264 yuv420p (``quality`` 0-10, imageio-ffmpeg's scale); ``.gif`` goes
    to :func:`write_gif`. Frames are streamed to ffmpeg. Returns the number of frames written.
    """
    path = check_video_path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if path.suffix.lower() == ".gif":
        return write_gif(frames, path, fps)
    import imageio_ffmpeg

    count, writer, size = 0, None, None
    with atomic_output(path) as tmp:
        try:
            for frame in frames:
                frame = _pad_even(_rgb_frame(frame))
                if writer is None:
                    size = frame.shape[1], frame.shape[0]
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=quality,
                        macro_block_size=1, ffmpeg_log_level="error",
                        output_params=["-movflags", "+faststart"],
                    )
                    writer.send(None)  # start the generator (launches ffmpeg)
                elif (frame.shape[1], frame.shape[0]) != size:
                    raise ValueError(f"frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                                     f"was {size[0]}x{size[1]}; all frames of a video must have one size")
                writer.send(frame)
                count += 1
            if count == 0:
                raise ValueError(f"{path}: no frames to write")
        finally:
            if writer is not None:
                writer.close()
    return count


def write_gif(frames: Iterable[np.ndarray | torch.Tensor], path: str | os.PathLike, fps: float = 15.0) -> int:
    """Write frames as a looping GIF (Pillow; palette per frame). Returns the number of frames."""
    from PIL import Image

    images = [Image.fromarray(_rgb_frame(f)) for f in frames]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    with atomic_output(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(int(round(1000.0 / fps)), 20), loop=0)
    return len(images)


def save_image(image: np.ndarray | torch.Tensor, path: str | os.PathLike) -> Path:
    """Save an [H, W, 3] / [H, W, 4] / [H, W] image (float in [0, 1] or uint8); format from the suffix."""
    from PIL import Image

    path = check_image_path(path)
    image = to_uint8(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    fmt = Image.registered_extensions()[path.suffix.lower()]
    pil = Image.fromarray(image)
    if fmt == "JPEG" and pil.mode == "RGBA":
        pil = pil.convert("RGB")
    # zlib level 1 for PNG: a quarter of the default level's time (0.08 against 0.32 s for a 2068 x 1102 views
    # grid of `perchead reconstruct`) for 17% more bytes
    options = {"compress_level": 1} if fmt == "PNG" else {}
    with atomic_output(path) as tmp:
        pil.save(tmp, format=fmt, **options)
    return path


def image_grid(images: Sequence[np.ndarray | torch.Tensor], ncols: int, labels: Sequence[str] | None = None,
               pad: int = 4, background: int = 255) -> np.ndarray:
    """Tile equally sized RGB images row by row into one uint8 image, each with an optional text label
    (Pillow's built-in font) in a strip underneath."""
    from PIL import Image, ImageDraw, ImageFont

    cells = [_rgb_frame(im) for im in images]
    if not cells:
        raise ValueError("image_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if labels is not None and len(labels) != len(cells):
        raise ValueError(f"{len(labels)} labels for {len(cells)} images")
    h, w = cells[0].shape[:2]
    if any(c.shape[:2] != (h, w) for c in cells):
        raise ValueError(f"grid images must share one size; got {sorted({c.shape[:2] for c in cells})}")
    font, label_h = None, 0
    if labels is not None:
        font_size = max(10, min(h, w) // 20)
        font = ImageFont.load_default(size=font_size)
        label_h = font_size + 2 * pad
    ncols = min(ncols, len(cells))
    nrows = -(-len(cells) // ncols)
    cell_h, cell_w = h + label_h + pad, w + pad
    canvas = Image.new("RGB", (ncols * cell_w + pad, nrows * cell_h + pad), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    text_fill = (0, 0, 0) if background > 127 else (255, 255, 255)
    for i, cell in enumerate(cells):
        x, y = pad + (i % ncols) * cell_w, pad + (i // ncols) * cell_h
        canvas.paste(Image.fromarray(cell), (x, y))
        if labels is not None:
            draw.text((x + w / 2, y + h + label_h / 2), labels[i], fill=text_fill, font=font, anchor="mm")
    return np.asarray(canvas)


def save_grid(images: Sequence[np.ndarray | torch.Tensor], path: str | os.PathLike, ncols: int,
              labels: Sequence[str] | None = None) -> Path:
    """:func:`image_grid` straight to a file."""
    return save_image(image_grid(images, ncols, labels), path)

"""Video -> one splat per frame and a side-by-side video (input crop | rendered view).

Frames are decoded one at a time by imageio-ffmpeg (its wheel ships ffmpeg), reconstructed independently
(no temporal smoothing) and streamed into the output video, so memory does not grow with the video's length.
The rendered view turns once around the head every ``turn_frames`` output frames, so the side-by-side shows
the 3D shape while the input plays.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import HEAD_CAMERA_RADIUS, orbit_viewmats
from ..io import save_ply, write_video
from .reconstruct import Reconstructor, StageTimes, resize_square, staged_output

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v")
SIDE_BY_SIDE = "side_by_side.mp4"
FRAMES_DIR = "frames"


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoResult:
    source: str
    fps: float
    """frame rate of side_by_side.mp4 (the input's divided by ``every``)"""
    frames: list[int] = field(default_factory=list)
    """source frame indices that were reconstructed (frames/<index>.ply)"""
    failures: list[tuple[int, str]] = field(default_factory=list)
    """(source frame index, reason) of frames that could not be reconstructed (e.g. no face)"""
    files: list[Path] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)


def video_yaw(index: int, turn_frames: int) -> float:
    """Yaw (degrees) of the rendered view in output frame ``index``: a full turn every ``turn_frames``."""
    return 360.0 * (index % turn_frames) / turn_frames


def open_video(path: Path) -> tuple[Iterator[bytes], dict]:
    """imageio-ffmpeg's frame generator (RGB24 bytes) and the stream's metadata, with clear errors."""
    import imageio_ffmpeg

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a video file")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        reader.close()
        first = str(exc).strip().splitlines()
        detail = first[-1] if first else type(exc).__name__
        raise ValueError(f"{path}: cannot be read as a video ({detail}); supported: "
                         f"{', '.join(VIDEO_SUFFIXES)} files ffmpeg can decode") from exc
    return reader, meta


def reconstruct_video(rec: Reconstructor, path: str | os.PathLike, out_dir: str | os.PathLike, every: int = 1,
                      max_frames: int | None = None, turn_frames: int = 120,
                      progress: bool = True) -> VideoResult:
    """Reconstruct every ``every``-th frame (at most ``max_frames`` of them) of a video.

    Writes ``out_dir/frames/<source frame index>.ply``, ``out_dir/side_by_side.mp4`` and
    ``out_dir/video.json`` (all of them only when the run completes; see :func:`staged_output`). A frame
    that fails (no face, empty mask) is recorded in ``failures`` and skipped; if no frame succeeds, a
    ValueError is raised.
    """
    if every < 1 or (max_frames is not None and max_frames < 1) or turn_frames < 1:
        raise ValueError(f"need --every >= 1, --max-frames >= 1 and --turn-frames >= 1 "
                         f"(got {every}, {max_frames}, {turn_frames})")
    path = Path(path)
    reader, meta = open_video(path)
    width, height = meta["size"]
    in_fps = float(meta.get("fps") or 30.0)
    result = VideoResult(str(path), in_fps / every)
    nframes = meta.get("nframes")
    finite = isinstance(nframes, int | float) and math.isfinite(nframes)
    expected = math.ceil(nframes / every) if finite else None
    if max_frames is not None:
        expected = max_frames if expected is None else min(expected, max_frames)
    times = result.times
    size = rec.config.size

    def side_by_side(stage: Path) -> Iterator[np.ndarray]:
        from tqdm import tqdm

        bar = tqdm(total=expected, desc=path.name, unit="frame", file=sys.stderr, disable=not progress)
        attempted = 0
        try:
            for index, raw in enumerate(reader):
                if index % every:
                    continue
                if max_frames is not None and attempted >= max_frames:
                    break
                attempted += 1
                bar.update(1)
                frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
                try:
                    with rec.timed(times, "preprocess"):
                        pre = rec.preprocess(frame)
                    with rec.timed(times, "network"):
                        g = rec.predict(pre)
                except ValueError as exc:  # no face, empty mask: skip this frame, keep the video going
                    result.failures.append((index, str(exc).replace("<array>: ", "")))
                    continue
                with rec.timed(times, "write"):
                    save_ply(g.to("cpu"), stage / FRAMES_DIR / f"{index:06d}.ply")
                yaw = video_yaw(len(result.frames), turn_frames)
                with rec.timed(times, "render"):
                    view = rec.render(g, orbit_viewmats([yaw], [0.0], HEAD_CAMERA_RADIUS))[0]
                result.frames.append(index)
                yield np.concatenate([resize_square(pre.crop, size), view], axis=1)
        finally:
            bar.close()
            reader.close()

    with staged_output(out_dir) as stage:
        (stage / FRAMES_DIR).mkdir()
        start = time.perf_counter()
        inner = times.total
        try:
            write_video(side_by_side(stage), stage / SIDE_BY_SIDE, fps=result.fps)
        except ValueError as exc:
            if result.frames:
                raise
            first = f"; first failure (frame {result.failures[0][0]}): {result.failures[0][1]}" \
                if result.failures else ""
            raise ValueError(f"{path}: no frame could be reconstructed ({len(result.failures)} tried){first}"
                             ) from exc
        # Encoding happens inside write_video, interleaved with the stages timed above: charge the rest to it.
        encode = (time.perf_counter() - start) - (times.total - inner)
        times.write += encode
        rec.times.write += encode
        summary = {"source": str(path), "input_fps": in_fps, "every": every, "output_fps": result.fps,
                   "turn_frames": turn_frames, "size": size, "frames": result.frames,
                   "failures": [{"frame": i, "reason": r} for i, r in result.failures]}
        (stage / "video.json").write_text(json.dumps(summary, indent=1) + "\n")
    out = Path(out_dir)
    result.files = [out / SIDE_BY_SIDE, out / "video.json"] + [out / FRAMES_DIR / f"{i:06d}.ply"
                                                               for i in result.frames]
    return result


__all__ = ["SIDE_BY_SIDE", "VIDEO_SUFFIXES", "VideoResult", "is_video", "open_video", "reconstruct_video",
           "video_yaw"]

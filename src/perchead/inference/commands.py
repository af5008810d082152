"""``perchead reconstruct``: photos, folders and videos -> head.ply, head.splat, turntable.mp4, views.png."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ..preprocess.io import DEFAULT_MAX_PIXELS
from .fit import FitConfig
from .reconstruct import ReconstructConfig, Reconstructor, set_threads
from .video import is_video, reconstruct_video


def _expand(inputs: list[Path]) -> tuple[list[Path], bool]:
    """Files to process (folders listed, hidden files skipped) and whether this is a batch."""
    if not inputs:
        raise FileNotFoundError("no input given: pass a photo, a folder of photos or a video")
    files: list[Path] = []
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{p}: the folder has no files to reconstruct")
            files += found
        else:
            files.append(p)
    return files, len(inputs) > 1 or any(p.is_dir() for p in inputs)


def _unique_dirs(files: list[Path], out: Path) -> list[Path]:
    """OUT/<stem>/ per input; a repeated stem (a.jpg, a.png) gets _2, _3, ..."""
    seen: dict[str, int] = {}
    dirs = []
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        dirs.append(out / (f.stem if seen[f.stem] == 1 else f"{f.stem}_{seen[f.stem]}"))
    return dirs


def reconstruct(
    inputs: Annotated[list[Path], tyro.conf.Positional],
    /,
    out: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("reconstruction"),
    checkpoint: str = "demo",
    dino: str | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    size: int = 512,
    frames: int = 60,
    video_size: int | None = 384,
    fps: float = 30.0,
    pitch: float = 10.0,
    video: bool = True,
    sharpen: bool = True,
    sharpen_size: int | None = None,
    allow_no_face: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    every: int = 1,
    max_frames: int | None = None,
    turn_frames: int = 120,
    backend: Literal["auto", "cpu", "reference", "gsplat"] = "auto",
    fit_steps: int = FitConfig.steps,
    fit_tune_steps: int = FitConfig.tune_steps,
    fit_tune_lr: float = FitConfig.tune_lr,
    fit_size: int = FitConfig.size,
    fit_gaussians: int = FitConfig.num_gaussians,
    fit_lr: float = FitConfig.lr,
    fit_symmetry: bool = FitConfig.symmetry,
    estimate_pose: bool = True,
    likeness: bool = True,
    threads: int | None = None,
    progress: bool = True,
) -> int:
    """Reconstruct 3D heads from photos, folders of photos or videos (docs/reconstruct.md).

    A photo writes into OUT: head.ply (standard 3DGS), head.splat, turntable.mp4, views.png (input crop and
    matted input beside the front, both profiles, back, above and below), input_crop.png, input_mask.png and
    input_view.png (the head from the estimated input camera beside the matted input) and reconstruction.json;
    all of them or, on an error, none. Photos are fitted: the network's head is densified and optimised against
    the photo from its estimated camera, after the network itself is tuned on the photo (--fit-steps 0: the
    network's prediction alone, the paper's result).
    Video frames are not fitted. A folder (or several inputs) is a batch: one
    OUT/<name>/ per file; files that fail are listed at the end and the exit status is 1. A video (.mp4, .mov,
    .avi, .webm, .mkv) writes OUT/frames/<frame>.ply per reconstructed frame and OUT/side_by_side.mp4 (input
    crop | rendered view turning around the head).

    Args:
        inputs: photo(s), folder(s) of photos, or video(s).
        out: output folder.
        checkpoint: checkpoint folder (config.json + model.safetensors), Hugging Face hub id, or "demo" (the
            checkpoint bundled with perchead).
        dino: DINOv2 folder or hub id replacing the one the checkpoint names (presets with a DINOv2 branch).
        device: where the network runs; auto = cuda when available.
        size: side of every rendered view, pixels.
        frames: turntable frames (one full turn).
        video_size: side of the turntable frames, pixels (default 384: a third cheaper to render than 512;
            None: --size).
        fps: turntable frame rate.
        pitch: turntable camera elevation in degrees.
        video: write turntable.mp4 (--no-video skips it: about a quarter of a CPU run).
        sharpen: apply the checkpoint's SHP-CNN to rendered images (no effect if it has none).
        sharpen_size: side at which SHP-CNN runs, its correction upsampled to --size (default: the model's
            input size, at which the sharpen stage trained it).
        allow_no_face: when no face is found, use the centred square of the whole image as the crop.
        max_pixels: photos with more pixels than this are refused (a decompression bomb or a mistaken file).
        every: videos: reconstruct every N-th frame.
        max_frames: videos: reconstruct at most this many frames.
        turn_frames: videos: the rendered view turns once around the head every N output frames.
        backend: rasteriser (auto = gsplat on a CUDA GPU when installed, else the CPU kernels).
        fit_steps: photos: steps of the fit to the photo (0: none, the network's Gaussians as they are).
        fit_tune_steps: photos: steps of tuning the network's weights on the photo before its Gaussians are
            fitted (0: the network as trained; off by default: docs/reconstruct.md, "From every side").
        fit_tune_lr: Adam learning rate of that tuning.
        fit_size: side of the renders the fit compares with the photo, pixels.
        fit_gaussians: Gaussians of the fitted head (each predicted one split into children; 0: no split).
        fit_lr: multiplies every learning rate of the fit.
        fit_symmetry: colour the side of the face the photo misses from the side it shows, through the
            template's left-right map (--no-fit-symmetry: the network's colours there).
        estimate_pose: estimate the input camera's yaw and pitch (off: the standard frontal camera).
        likeness: write the dlib identity distance between the photo and renders to reconstruction.json.
        threads: CPU threads for the network and the rasteriser (default: all cores); on a machine busy with
            other jobs, 1 can be faster.
        progress: show progress bars.
    """
    files, batch = _expand(inputs)
    if threads is not None:
        set_threads(threads)
    config = ReconstructConfig(checkpoint=checkpoint, dino=dino, device=device, size=size, frames=frames,
                               video_size=video_size, fps=fps, pitch=pitch, video=video, sharpen=sharpen,
                               sharpen_size=sharpen_size, allow_no_face=allow_no_face, max_pixels=max_pixels,
                               backend=backend, estimate_pose=estimate_pose, likeness=likeness,
                               progress=progress,
                               fit=FitConfig(steps=fit_steps, tune_steps=fit_tune_steps, tune_lr=fit_tune_lr,
                                             size=fit_size, num_gaussians=fit_gaussians, lr=fit_lr,
                                             symmetry=fit_symmetry))
    # Warnings of the preprocessing are printed below, next to the photo they concern.
    logging.getLogger("perchead.preprocess").setLevel(logging.ERROR)
    rec = Reconstructor(config)
    cfg = rec.model.config
    count = f"{cfg.num_gaussians:,} Gaussians" if cfg.decoder == "template" else f"{cfg.decoder} decoder"
    print(f"loaded {checkpoint} ({cfg.preset} preset, {count}) "
          f"on {rec.device} in {rec.times.load:.2f} s", file=sys.stderr)

    def one(path: Path, target: Path, say) -> bool:
        """Reconstruct one input into ``target``; returns whether everything succeeded."""
        if is_video(path):
            res = reconstruct_video(rec, path, target, every=every, max_frames=max_frames,
                                    turn_frames=turn_frames, progress=progress)
            say(f"{path} -> {target}: {len(res.frames)} frame(s), {target / 'side_by_side.mp4'} "
                f"({res.times.summary(('preprocess', 'network', 'render', 'write'))})")
            for index, reason in res.failures:
                print(f"perchead reconstruct: {path} frame {index} skipped: {reason}", file=sys.stderr)
            return not res.failures
        result = rec.run(path, target)
        notes = f" ({'; '.join(result.warnings)})" if result.warnings else ""
        say(f"{path} -> {target}/ [{', '.join(f.name for f in result.files)}]{notes}")
        say(f"  times: {result.times.summary(('preprocess', 'network', 'fit', 'render', 'write'))}")
        if result.likeness and result.likeness.get("photo_face_found"):
            dist = {k: v for k, v in result.likeness.items() if k.startswith(("input", "yaw"))}
            say("  likeness (dlib distance to the photo, same person < 0.6): "
                + ", ".join(f"{k} {'no face' if v is None else f'{v:.3f}'}" for k, v in dist.items()))
        return True

    if not batch:
        return 0 if one(files[0], out, print) else 1

    from tqdm import tqdm

    failures: list[tuple[Path, Exception]] = []
    partial: list[Path] = []
    for path, target in tqdm(list(zip(files, _unique_dirs(files, out), strict=True)), desc="reconstruct",
                             unit="file", file=sys.stderr, disable=not progress):
        try:
            if not one(path, target, tqdm.write):
                partial.append(path)
        except Exception as exc:  # one bad file must not cost the rest of the batch
            failures.append((path, exc))
    for path, exc in failures:
        msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        print(f"perchead reconstruct: failed {msg}", file=sys.stderr)
    print(f"{len(files) - len(failures)} of {len(files)} reconstructed into {out}, {len(failures)} failed"
          + (f", {len(partial)} video(s) with skipped frames" if partial else ""))
    return 1 if failures or partial else 0

"""Photo -> 3D head files: preprocessing, the network, renders of the result, and atomic writes.

A :class:`Reconstructor` loads a checkpoint once and then turns any number of photos (or video frames) into
Gaussians and files, recording the time spent in each stage (load, preprocess, network, fit, render, write)::

    from perchead.inference import Reconstructor, ReconstructConfig

    rec = Reconstructor(ReconstructConfig(checkpoint="ckpt/"))
    result = rec.run("photo.jpg", "out/")        # out/head.ply, head.splat, turntable.mp4, views.png, ...
    result.gaussians, result.times, result.pose

Between the network and the renders, photos go through the test-time fit of :mod:`perchead.inference.fit`
(``FitConfig.steps = 0``: the network's Gaussians as they are, the paper's feed-forward result).

Every camera is the standard head camera (``HEAD_CAMERA_RADIUS``, ``HEAD_CAMERA_FOV_DEG``) that the
preprocessing crop and the training data assume for the input view, so the "front" render is framed like the
input crop and every other view shows the head at the same scale.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..geometry import (
    HEAD_CAMERA_FOV_DEG,
    HEAD_CAMERA_RADIUS,
    Gaussians,
    orbit_viewmats,
    turntable_viewmats,
)
from ..io import image_grid, save_image, save_ply, save_splat, to_uint8, write_video
from ..io.commands import GRID_VIEWS
from ..preprocess import PreprocessConfig, Preprocessed, preprocess_image
from ..preprocess.io import DEFAULT_MAX_PIXELS, ImageInput
from ..render import gsplat_available, rasterize
from .fit import FitConfig, FitResult, child_shrink, turned_viewmats
from .pose import Pose, camera_K, estimate_pose
from .tune import fit_network

Progress = Callable[[float, str], None]
"""progress(fraction in [0, 1], what is happening): where long work reports to a progress bar (the app's)."""


def no_progress(fraction: float, what: str) -> None:
    pass

log = logging.getLogger(__name__)

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo"
"""Where the bundled demo checkpoint lives (``--checkpoint demo``)."""

STAGES = ("load", "preprocess", "network", "fit", "render", "write")
RENDER_CHUNK = 8  # cameras per rasterize() call: bounds memory for long turntables at large sizes

# Names of the files written for one photo, in the order they are written.
PHOTO_FILES = ("head.ply", "head.splat", "turntable.mp4", "views.png", "input_view.png", "input_crop.png",
               "input_mask.png", "reconstruction.json")
TURNED_VIEWS = (-45.0, 45.0)
"""degrees by which the input camera is turned (:func:`~perchead.inference.fit.turned_viewmats`) for the two views
of ``views.png`` beside the matted input: where a head painted for one camera stops looking like the person
(issue 28), so a user sees it at once. The sign is ``turned_viewmats``' and ``reconstruction.json``'s
(``turn_+45``): + turns the camera towards the subject's right ear, the opposite of ``GRID_VIEWS``' yaw, so the
cells are labelled by the ear rather than by the sign."""
LIKENESS_TURNS = (30.0, -30.0, 45.0, -45.0)
"""degrees by which the input camera is turned about the head's vertical axis for the renders whose dlib
identity distance to the photo ``reconstruction.json`` reports, besides the input view and the front view: a
head that is a head there, not a picture painted for one camera (issue 28)"""
LIKENESS_CHECK_SIZE = 256
"""side of the back view whose colour is compared with the photo's hair"""


@dataclass
class ReconstructConfig:
    """How photos become files. Every field is a ``perchead reconstruct`` option."""

    checkpoint: str = "demo"
    """checkpoint folder, Hugging Face hub id (owner/name), or "demo" for the bundled demo checkpoint"""
    dino: str | None = None
    """DINOv2 folder or hub id replacing the one the checkpoint names (e.g. a local copy)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when a GPU is available, else cpu"""
    size: int = 512
    """side of every rendered view and of the turntable, pixels"""
    frames: int = 60
    """turntable frames (one full turn)"""
    video_size: int | None = 384
    """side of the turntable frames, pixels (None: ``size``). A fitted head's 65k Gaussians cost ~0.08 s a frame
    at 512 px and ~0.06 s at 384 px on 2 AVX2 cores (``benchmarks/bench_render.py --ply``), and the turntable
    has 60 of them"""
    fps: float = 30.0
    """turntable frame rate"""
    pitch: float = 10.0
    """turntable camera elevation, degrees (positive = above)"""
    video: bool = True
    """write turntable.mp4 (rendering and encoding it is about a quarter of a warm CPU run)"""
    sharpen: bool = True
    """apply the checkpoint's SHP-CNN to the rendered images (no effect when it has none)"""
    sharpen_size: int | None = None
    """side at which SHP-CNN runs; its correction is upsampled to --size. None = the model's input size,
    the resolution the sharpen stage trained it at"""
    allow_no_face: bool = False
    """a photo without a detected face is cropped as the centred square of the whole image"""
    crop_size: int = 512
    """side of the preprocessed crop (input_crop.png); resized to the model's input size for the network"""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """photos with more pixels than this are refused (a decompression bomb or a mistaken file)"""
    backend: Literal["auto", "cpu", "reference", "gsplat"] = "auto"
    """rasteriser: auto = gsplat for CUDA tensors when installed, else the CPU kernels"""
    fit: FitConfig = field(default_factory=FitConfig)
    """the test-time fit to the photo (``fit.steps = 0``: none)"""
    estimate_pose: bool = True
    """estimate the input camera's yaw and pitch (perchead.inference.pose); off: the standard frontal camera"""
    likeness: bool = True
    """measure the dlib identity distance between the photo and renders (reconstruction.json's ``likeness``)"""
    progress: bool = False
    """show a progress bar of the fit on stderr"""

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"--size must be at least 16 pixels, got {self.size}")
        if self.frames < 1 or not self.fps > 0:
            raise ValueError(f"need --frames >= 1 and --fps > 0, got {self.frames} and {self.fps}")
        if self.video_size is not None and self.video_size < 16:
            raise ValueError(f"--video-size must be at least 16 pixels, got {self.video_size}")
        if self.sharpen_size is not None and self.sharpen_size < 16:
            raise ValueError(f"--sharpen-size must be at least 16 pixels, got {self.sharpen_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class StageTimes:
    """Seconds spent per stage. ``load`` is paid once per :class:`Reconstructor`, the rest per photo."""

    load: float = 0.0
    preprocess: float = 0.0
    network: float = 0.0
    fit: float = 0.0
    render: float = 0.0
    write: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, s) for s in STAGES)

    def __iadd__(self, other: StageTimes) -> StageTimes:
        for s in STAGES:
            setattr(self, s, getattr(self, s) + getattr(other, s))
        return self

    def summary(self, stages: Sequence[str] = STAGES) -> str:
        return ", ".join(f"{s} {getattr(self, s):.2f} s" for s in stages)


@dataclass
class Reconstruction:
    """One photo's result, in memory until :meth:`Reconstructor.write` puts it on disk."""

    source: str
    preprocessed: Preprocessed
    gaussians: Gaussians
    """unbatched, on the CPU, canonical head frame"""
    views: np.ndarray
    """uint8 [6, S, S, 3]: the views of ``io.commands.GRID_VIEWS`` (front, profiles, back, above, below)"""
    turntable: np.ndarray | None
    """uint8 [F, S, S, 3], or None with ``video=False``"""
    pose: Pose = field(default_factory=lambda: Pose(0.0, 0.0))
    """the input camera (estimated, or the standard frontal one)"""
    input_view: np.ndarray | None = None
    """uint8 [S, S, 3]: the head rendered from ``pose``"""
    fit: FitResult | None = None
    """the test-time fit, None when it did not run"""
    likeness: dict | None = None
    """dlib identity distances photo <-> renders (``reconstruction.json``), None when not measured"""
    turned: np.ndarray | None = None
    """uint8 [2, S, S, 3]: the head from ``pose`` turned by :data:`TURNED_VIEWS` (None: not rendered)"""
    sharpened: bool = False
    times: StageTimes = field(default_factory=StageTimes)
    files: list[Path] = field(default_factory=list)
    """filled by :meth:`Reconstructor.write`"""

    @property
    def warnings(self) -> list[str]:
        """What may make the head untrustworthy: the preprocessing's notes (matting, crop) and the fit's (a
        matte or camera it did not trust)."""
        return [*self.preprocessed.warnings, *(self.fit.warnings if self.fit is not None else [])]


class Reconstructor:
    """Load a checkpoint once; reconstruct many photos. Not thread-safe (nor is the preprocessing)."""

    def __init__(self, config: ReconstructConfig | None = None, model=None) -> None:
        """``model``: an already built :class:`~perchead.model.PercHead` instead of ``config.checkpoint``."""
        self.config = config or ReconstructConfig()
        self.device = resolve_device(self.config.device)
        # The CPU kernels render CUDA tensors only through gsplat; without it the Gaussians come back to the
        # CPU for rendering (the network still runs on the GPU).
        cuda_render = (self.device.type == "cuda" and self.config.backend in ("auto", "gsplat")
                       and gsplat_available())
        self.render_device = self.device if cuda_render else torch.device("cpu")
        self.times = StageTimes()
        start = time.perf_counter()
        self.model = (model if model is not None else load_model(self.config.checkpoint, self.config.dino))
        self.model = self.model.to(self.device).eval()
        self.times.load = time.perf_counter() - start
        self.preprocess_config = PreprocessConfig(size=self.config.crop_size, allow_no_face=self.config.allow_no_face,
                                                  max_pixels=self.config.max_pixels)
        self.sharpens = self.config.sharpen and shp_cnn_changes_images(self.model)
        self.sharpen_size = self.config.sharpen_size or self.model.config.image_size

    # -- stages ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self, times: StageTimes, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # GPU work is asynchronous: charge it to its own stage
            elapsed = time.perf_counter() - start
            setattr(times, stage, getattr(times, stage) + elapsed)
            setattr(self.times, stage, getattr(self.times, stage) + elapsed)

    def preprocess(self, source: ImageInput) -> Preprocessed:
        """Photo -> matted square crop, mask and camera (docs/preprocess.md); raises NoFaceError et al."""
        return preprocess_image(source, self.preprocess_config)

    def network_inputs(self, pre: Preprocessed) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, 3, S, S] image in [0, 1] and [1, 1, S, S] mask at the model's input size.

        The unmatted crop goes in with its mask (the model composites it): the same contract and the same
        antialiased bilinear resize as the training data (perchead.train.data).
        """
        s = self.model.config.image_size
        image = torch.from_numpy(np.array(pre.crop)).permute(2, 0, 1)[None].float() / 255.0
        mask = torch.from_numpy(np.array(pre.mask, dtype=np.float32))[None, None].float()
        if image.shape[-1] != s:
            image = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            mask = F.interpolate(mask, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mask = mask.clamp(0.0, 1.0)
        if not bool((mask > self.model.config.fg_threshold).any()):
            raise ValueError(f"{pre.source}: the matting found no person in the crop (the mask is empty), so "
                             "there is nothing to reconstruct; use a photo where the head is clearly visible")
        return image.to(self.device), mask.to(self.device)

    def predict(self, pre: Preprocessed) -> Gaussians:
        """Preprocessed photo -> unbatched Gaussians (float32, on the render device)."""
        image, mask = self.network_inputs(pre)
        with torch.inference_mode():
            g = self.model(image, mask)[0].to(self.render_device, torch.float32)
        g.check_finite()  # a broken checkpoint must fail here, not as a black video
        return g

    def render(self, gaussians: Gaussians, viewmats: torch.Tensor, sharpen: bool | None = None,
               size: int | None = None, done: Callable[[int, int], None] | None = None) -> np.ndarray:
        """uint8 [C, S, S, 3] renders on white at ``size`` (default ``config.size``), sharpened by SHP-CNN when
        ``sharpen`` (by default when enabled and present). ``done(rendered, total)`` is called after every chunk
        of cameras (a 60-frame turntable of a fitted head takes over a minute on a busy CPU)."""
        sharpen = self.sharpens if sharpen is None else sharpen
        size = size or self.config.size
        gaussians = gaussians.to(self.render_device)
        out = []
        with torch.inference_mode():
            for start in range(0, len(viewmats), RENDER_CHUNK):
                vm = viewmats[start:start + RENDER_CHUNK].to(self.render_device)
                rgb = self.rasterize(gaussians, vm, size)
                if sharpen:
                    rgb = self.sharpen(gaussians, vm, rgb)
                out.append(to_uint8(rgb.float()))
                if done is not None:
                    done(start + len(vm), len(viewmats))
        return np.concatenate(out)

    def rasterize(self, gaussians: Gaussians, viewmats: torch.Tensor, size: int) -> torch.Tensor:
        """[C, size, size, 3] renders on white through the standard input camera's intrinsics."""
        Ks = camera_K(size).to(viewmats).expand(len(viewmats), 3, 3)
        return rasterize(gaussians, viewmats, Ks, size, size, backend=self.config.backend).rgb

    def sharpen(self, gaussians: Gaussians, viewmats: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """``rgb`` plus SHP-CNN's correction computed on a render at ``sharpen_size`` and upsampled.

        The sharpen stage trains SHP-CNN on renders at the model's input size, so its 3x3 kernels correct blur
        at that scale; on a 4x larger render they would act at a quarter of it, and cost 16x more.
        """
        small = rgb if rgb.shape[1] == self.sharpen_size else self.rasterize(gaussians, viewmats, self.sharpen_size)
        small = small.permute(0, 3, 1, 2).to(self.device)
        correction = self.model.sharpen(small) - small
        if correction.shape[-1] != rgb.shape[1]:
            correction = F.interpolate(correction, size=rgb.shape[1:3], mode="bilinear", align_corners=False)
        return rgb + correction.permute(0, 2, 3, 1).to(rgb.device)

    def grid_viewmats(self) -> torch.Tensor:
        _, yaws, pitches = zip(*GRID_VIEWS, strict=True)
        return orbit_viewmats(list(yaws), list(pitches), HEAD_CAMERA_RADIUS)

    def turntable_viewmats(self) -> torch.Tensor:
        return turntable_viewmats(self.config.frames, HEAD_CAMERA_RADIUS, self.config.pitch)

    # -- whole photos ---------------------------------------------------------------------------------------
    def reconstruct(self, source: ImageInput, progress: Progress | None = None) -> Reconstruction:
        """Photo -> :class:`Reconstruction` in memory (nothing written)."""
        progress = progress or no_progress
        times = StageTimes()
        progress(0.02, "finding the face and cropping the head")
        with self.timed(times, "preprocess"):
            pre = self.preprocess(source)
        progress(0.15, "running the network")
        with self.timed(times, "network"):
            g = self.predict(pre)
        with self.timed(times, "fit"):
            pose, fit = self.fit(g, pre, progress)
        result = self.render_result(g if fit is None else fit.gaussians, pre, times, progress, pose=pose,
                                    sharpen=fit is None)
        result.fit = fit
        if self.config.likeness:
            progress(0.86, "comparing the head with the photo")
            with self.timed(times, "render"):
                result.likeness = self.likeness(result)
        return result

    def fit(self, gaussians: Gaussians, pre: Preprocessed,
            progress: Progress | None = None) -> tuple[Pose, FitResult | None]:
        """The input camera and (with ``fit.steps`` or ``fit.tune_steps`` > 0) the Gaussians tuned and fitted to the
        photo."""
        progress = progress or no_progress
        cfg = self.config.fit
        image = torch.from_numpy(np.array(pre.image)).permute(2, 0, 1).float() / 255.0
        mask = torch.from_numpy(np.array(pre.mask, dtype=np.float32))[None]
        pose = Pose(0.0, 0.0)
        if self.config.estimate_pose:
            progress(0.18, "estimating the input camera")
            pose = estimate_pose(image, mask)
        if cfg.steps == 0 and cfg.tune_steps == 0:
            return pose, None
        if cfg.child_shrink is None and pre.source_side < image.shape[-1]:
            # an enlarged crop of a small head: the children no finer than the photo's own pixels
            cfg = replace(cfg, child_shrink=child_shrink(cfg.size / pre.source_side))
        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps + cfg.tune_steps, desc="fit", unit="step", file=sys.stderr, leave=False)

        def step(i: int, n: int, loss: float) -> None:
            progress(0.2 + 0.25 * i / n, f"fitting the head to the photo: step {i}/{n}, loss {loss:.4f}")
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)

        try:
            result = fit_network(self.model, *self.network_inputs(pre), image, mask, cfg, pose=pose,
                                 gaussians=gaussians, backend=self.config.backend, progress=step)
        finally:
            if bar is not None:
                bar.close()
        return result.pose, result  # the fit may move the camera sideways (FitConfig.max_camera_shift)

    def render_result(self, gaussians: Gaussians, pre: Preprocessed, times: StageTimes | None = None,
                      progress: Progress | None = None, pose: Pose | None = None,
                      sharpen: bool = True) -> Reconstruction:
        """The views, the input view and the turntable of ``gaussians``, as a :class:`Reconstruction` of
        ``pre``: the end of :meth:`reconstruct`, also the end of the editing paths (their Gaussians come from a
        map and a style). ``sharpen=False`` skips SHP-CNN (fitted Gaussians: it was trained on the network's
        renders, and the fit already matches the photo's sharpness)."""
        progress = progress or no_progress
        times = times if times is not None else StageTimes()
        pose = pose or Pose(0.0, 0.0)
        sharpens = sharpen and self.sharpens
        def counted(start: float, end: float, what: str) -> Callable[[int, int], None]:
            def done(i: int, n: int) -> None:
                progress(start + (end - start) * i / n, what.format(i=i, n=n))
            return done

        with self.timed(times, "render"):
            views_done = counted(0.5, 0.6, "rendering the views: {i}/{n}")
            cameras = torch.cat([self.grid_viewmats(), pose.viewmat[None], turned_viewmats(pose.viewmat,
                                                                                         TURNED_VIEWS)])
            views_done(0, len(cameras))
            views = self.render(gaussians, cameras, sharpens, done=views_done)
            n = len(GRID_VIEWS)
            views, input_view, turned = views[:n], views[n], views[n + 1:]
            turntable = None
            if self.config.video:
                frames_done = counted(0.6, 0.85, "rendering the turntable: frame {i}/{n}")
                frames_done(0, self.config.frames)
                turntable = self.render(gaussians, self.turntable_viewmats(), sharpens,
                                        self.config.video_size or self.config.size, done=frames_done)
        return Reconstruction(pre.source, pre, gaussians.to("cpu"), views, turntable, pose, input_view,
                              times=times, sharpened=sharpens, turned=turned)

    @functools.cached_property
    def face_encoder(self):
        """The likeness report's dlib identity model (:class:`perchead.preprocess.identity.DlibFaceEncoder`),
        loaded at the first likeness and kept for the next photos (loading it took ~0.14 s a photo)."""
        from ..preprocess.identity import DlibFaceEncoder

        return DlibFaceEncoder()

    def likeness(self, rec: Reconstruction) -> dict:
        """How much the head looks like the photo, and from every side: the PSNR of the input-view render
        against the matted photo over the photo's mask; dlib identity distances between the photo's crop and
        the renders from the input camera, the front and the input camera turned by :data:`LIKENESS_TURNS`
        (``turn_+30``: same person below 0.6; None where dlib finds no face); and ``back_delta_e``
        (:func:`back_colour_difference`, the back of the head against the top of the photo's head)."""
        from ..eval.metrics import psnr

        size = self.config.size
        matted = torch.from_numpy(resize_square(rec.preprocessed.image, size)).permute(2, 0, 1).float() / 255
        mask = torch.from_numpy(np.array(Image.fromarray(rec.preprocessed.mask).resize((size, size),
                                                                                       Image.Resampling.BILINEAR)))
        view = torch.from_numpy(rec.input_view).permute(2, 0, 1).float() / 255
        out: dict = {"input_view_masked_psnr_db": round(float(psnr(view, matted, mask[None].float())), 3)}
        delta_e = self.back_delta_e(rec.gaussians, rec.pose, rec.preprocessed)
        out["back_delta_e"] = None if math.isnan(delta_e) else round(delta_e, 2)
        metric = self.face_encoder
        photo = metric.embed(np.ascontiguousarray(rec.preprocessed.crop))
        out.update({"metric": "dlib euclidean distance (same person < 0.6)", "photo_face_found": photo is not None})
        if photo is None:
            return out
        # the front, the input view and the views.png turns are rendered already; only the other turns are new
        done = dict(zip(TURNED_VIEWS, rec.turned, strict=True)) if rec.turned is not None else {}
        todo = [t for t in LIKENESS_TURNS if t not in done]
        if todo:
            done.update(zip(todo, self.render(rec.gaussians, turned_viewmats(rec.pose.viewmat, tuple(todo)),
                                              rec.sharpened), strict=True))
        views = {"input_view": rec.input_view, "yaw_+0": rec.views[0],
                 **{f"turn_{t:+.0f}": done[t] for t in LIKENESS_TURNS}}
        for name, image in views.items():
            e = metric.embed(np.ascontiguousarray(image))
            out[name] = None if e is None else round(metric.distance(photo, e), 4)
        return out

    def back_delta_e(self, gaussians: Gaussians, pose: Pose, pre: Preprocessed) -> float:
        """:func:`back_colour_difference` of the head seen from behind (the input camera turned 180 degrees)
        against the top of the photo's head; NaN when either is empty."""
        s = LIKENESS_CHECK_SIZE
        back_vm = turned_viewmats(pose.viewmat, (180.0,))
        with torch.inference_mode():
            back = rasterize(gaussians.to(self.render_device), back_vm.to(self.render_device),
                             camera_K(s)[None].to(self.render_device), s, s, backend=self.config.backend)
        return back_colour_difference(
            back.rgb[0].float().cpu().numpy(), back.alpha[0, ..., 0].float().cpu().numpy(),
            resize_square(pre.crop, s) / 255.0,
            np.asarray(Image.fromarray(pre.mask).resize((s, s), Image.Resampling.BILINEAR)))

    def write(self, rec: Reconstruction, out_dir: str | os.PathLike) -> list[Path]:
        """Write every file of ``rec`` into ``out_dir``: all of them, or (on any error) none."""
        with self.timed(rec.times, "write"), staged_output(out_dir) as stage:
            save_ply(rec.gaussians, stage / "head.ply")
            save_splat(rec.gaussians, stage / "head.splat")
            if rec.turntable is not None:
                write_video(rec.turntable, stage / "turntable.mp4", fps=self.config.fps)
            save_image(self.views_image(rec), stage / "views.png")
            save_image(self.input_view_image(rec), stage / "input_view.png")
            save_image(rec.preprocessed.crop, stage / "input_crop.png")
            save_image(rec.preprocessed.mask, stage / "input_mask.png")
            (stage / "reconstruction.json").write_text(json.dumps(self.metadata(rec), indent=1) + "\n")
        names = [n for n in PHOTO_FILES if n != "turntable.mp4" or rec.turntable is not None]
        rec.files = [Path(out_dir) / n for n in names]
        return rec.files

    def run(self, source: ImageInput, out_dir: str | os.PathLike) -> Reconstruction:
        """:meth:`reconstruct` then :meth:`write`."""
        rec = self.reconstruct(source)
        self.write(rec, out_dir)
        return rec

    # -- pictures and metadata ------------------------------------------------------------------------------
    def views_image(self, rec: Reconstruction) -> np.ndarray:
        """The labelled grid: the input crop and what the network saw (matted), then the views.

        5 columns x 2 rows: [crop, front, left profile, right profile, back] / [matted input, the input camera
        turned by :data:`TURNED_VIEWS` (towards the left ear, then the right), above, below]; without the
        turned views (a :class:`Reconstruction` made by hand), 4 x 2: [crop, front, left profile, right
        profile] / [matted input, back, above, below].
        """
        size = self.config.size
        crop = resize_square(rec.preprocessed.crop, size)
        matted = resize_square(rec.preprocessed.image, size)
        labels = [label for label, _, _ in GRID_VIEWS]
        if rec.turned is None:
            cells = [crop, *rec.views[:3], matted, *rec.views[3:]]
            names = ["input crop", *labels[:3], "matted input", *labels[3:]]
            return image_grid(cells, ncols=4, labels=names)
        turned = [f"input camera, {abs(t):.0f} deg to the {'left' if t < 0 else 'right'} ear" for t in TURNED_VIEWS]
        cells = [crop, *rec.views[:4], matted, *rec.turned, *rec.views[4:]]
        names = ["input crop", *labels[:4], "matted input", *turned, *labels[4:]]
        return image_grid(cells, ncols=5, labels=names)

    def input_view_image(self, rec: Reconstruction) -> np.ndarray:
        """The head rendered from the input camera beside the matted input it should look like."""
        matted = resize_square(rec.preprocessed.image, self.config.size)
        what = "fitted" if rec.fit is not None else "predicted"
        p = rec.pose
        return image_grid([matted, rec.input_view], ncols=2,
                          labels=["matted input", f"{what}, input camera (yaw {p.yaw_deg:+.0f}, "
                                                  f"pitch {p.pitch_deg:+.0f})"])

    def metadata(self, rec: Reconstruction) -> dict:
        cfg = self.model.config
        return {
            "source": rec.source,
            "checkpoint": str(self.config.checkpoint),
            "preset": cfg.preset,
            "num_gaussians": len(rec.gaussians),
            "sharpened": rec.sharpened,
            "sharpen_size": self.sharpen_size if rec.sharpened else None,
            "input_camera": rec.pose.metadata(self.config.size),
            "fit": rec.fit.metadata(self.config.fit) if rec.fit is not None else {"ran": False, "steps": 0},
            # everything a user should know before trusting the head: the preprocessing's and the fit's
            "warnings": rec.warnings,
            "likeness": rec.likeness,
            "render": {"size": self.config.size, "video_size": self.config.video_size or self.config.size,
                       "frames": self.config.frames if rec.turntable is not None
                       else 0, "fps": self.config.fps, "pitch_deg": self.config.pitch,
                       "camera_radius_m": HEAD_CAMERA_RADIUS, "fov_deg": HEAD_CAMERA_FOV_DEG,
                       "views": [{"label": lbl, "yaw_deg": y, "pitch_deg": p} for lbl, y, p in GRID_VIEWS]},
            "preprocess": rec.preprocessed.metadata(),
            # The write stage is still running when this is written: only the stages before it.
            "times_s": {s: round(getattr(rec.times, s), 4) for s in ("preprocess", "network", "fit", "render")},
        }


# -- helpers -------------------------------------------------------------------------------------------------
def set_threads(threads: int) -> None:
    """CPU threads for the network (torch) and the rasteriser (numba; at most the pool numba started with)."""
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    import numba

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def load_model(checkpoint: str | os.PathLike, dino: str | None = None):
    """A PercHead checkpoint (folder, hub id, or "demo") -> the model; errors say what is wrong."""
    from ..model import PercHead

    source = str(checkpoint)
    if source == "demo":
        if not (DEMO_CHECKPOINT / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"the bundled demo checkpoint is missing from this installation ({DEMO_CHECKPOINT} has no "
                "model.safetensors); pass --checkpoint with a checkpoint folder (config.json + "
                "model.safetensors, e.g. one written by `perchead train`) or a Hugging Face hub id")
        source = str(DEMO_CHECKPOINT)
    try:
        return PercHead.from_pretrained(source, dino=dino)
    except (FileNotFoundError, ValueError, RuntimeError):
        raise  # already one clear sentence naming the file and the problem
    except Exception as exc:  # e.g. a config.json with fields of the wrong type
        raise ValueError(f"cannot load checkpoint {source}: {type(exc).__name__}: {exc}") from exc


def shp_cnn_changes_images(model) -> bool:
    """Whether the model has an SHP-CNN that is not the identity. Its last convolution is zero-initialised
    (perchead.model.shp_cnn), so until the sharpen stage has trained it, it returns its input exactly:
    skipping it then saves several GFLOP per 512 px render without changing a pixel."""
    shp = model.shp_cnn
    if shp is None:
        return False
    return bool(shp.tail.weight.detach().any() or shp.tail.bias.detach().any())


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    # np.array, not np.asarray: PIL's buffer is read-only and torch.from_numpy of it warns (and must not write)
    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] sRGB in [0, 1] -> CIE L*a*b* (D65 white), as skimage.color.rgb2lab."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def back_colour_difference(back_rgb: np.ndarray, back_alpha: np.ndarray, crop: np.ndarray, mask: np.ndarray) -> float:
    """CIE76 delta E between the median Lab colour of the upper half of the back view's silhouette (alpha >
    0.5) and that of the top band (15% of its height) of the photo's head in the crop: the back of the hair
    against the hair the photo shows (the scalp where bald). Images [S, S, 3] in [0, 1], alpha and mask
    [S, S]. NaN when either is empty."""
    def top(weight: np.ndarray, share: float) -> np.ndarray:
        rows = np.nonzero((weight > 0.5).any(1))[0]
        if len(rows) == 0:
            return np.zeros_like(weight, dtype=bool)
        limit = rows.min() + share * (rows.max() - rows.min())
        return (weight > 0.5) & (np.arange(len(weight))[:, None] < limit)

    back, photo = top(back_alpha, 0.5), top(mask, 0.15)
    if not back.any() or not photo.any():
        return math.nan
    a = np.median(srgb_to_lab(back_rgb)[back], axis=0)
    b = np.median(srgb_to_lab(crop)[photo], axis=0)
    return float(np.linalg.norm(a - b))


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder inside ``out_dir``; on success move everything in it into ``out_dir``
    (sub-folders merged, files replaced one ``os.replace`` each), on any error delete it -- so a failed
    reconstruction leaves neither partial files nor a half-updated set next to older results."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; give an output folder with -o")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".perchead-partial-", dir=out))
    try:
        yield stage
        for src in sorted(stage.rglob("*")):
            if src.is_file():
                dst = out / src.relative_to(stage)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never delete what someone else put there
        raise
    shutil.rmtree(stage, ignore_errors=True)


__all__ = ["DEMO_CHECKPOINT", "PHOTO_FILES", "STAGES", "Progress", "ReconstructConfig", "no_progress", "Reconstruction",
           "Reconstructor", "StageTimes", "load_model", "resolve_device", "set_threads", "staged_output"]

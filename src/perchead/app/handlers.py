"""What the web app does, as plain functions of files and arrays (no gradio here): tests call these directly
and :mod:`perchead.app.ui` only wires them to widgets.

* :meth:`PercheadApp.reconstruct`: photo -> head.ply, head.splat, turntable.mp4, views.png (+ a copy of the
  Gaussians oriented for the browser's splat viewer), through :class:`perchead.inference.Reconstructor`.
* :meth:`PercheadApp.map_from_photo` / :meth:`PercheadApp.map_from_file`: a class-colour map to paint on.
* :meth:`PercheadApp.render_edit`: painted map + style (text or reference image) -> the same files, through
  :class:`perchead.edit.EditNetwork` and the same renderer and writer.

Every handler returns a result whose ``message`` says what happened; bad uploads (corrupt, too large, no
face, not a map, ...) and failures become that message instead of an exception, because the page must show
them to the person who uploaded the file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perchead.data.format import SEG
from perchead.edit import colorize, load_segmentation, segment_photo
from perchead.edit.fit import MapFitConfig
from perchead.edit.network import DEMO_EDIT_CHECKPOINT
from perchead.edit.pipeline import (
    fidelity_line,
    follow_map,
    generate_head,
    image_style,
    map_preprocessed,
    write_edit_files,
)
from perchead.edit.segmentation import resize_segmentation
from perchead.geometry import Gaussians
from perchead.inference import (
    DEMO_CHECKPOINT,
    Progress,
    ReconstructConfig,
    Reconstruction,
    Reconstructor,
    no_progress,
    staged_output,
)
from perchead.inference.fit import FitConfig
from perchead.io import save_ply
from perchead.model.perchead_model import WEIGHTS_NAME
from perchead.preprocess import NoFaceError
from perchead.preprocess.io import open_image

from .painting import MapError, labels_from_editor

log = logging.getLogger(__name__)

EXAMPLE_PHOTO = DEMO_CHECKPOINT.parent / "example_photo.jpg"

# The browser's splat viewer (gsplat.js inside gradio's Model3D) looks from 5 units away with a fixed focal
# length and treats +y as down, as COLMAP scenes do. Our heads are ~0.25 m tall with +y up and the face
# towards +z, so the copy it shows is turned 180 degrees about x (upright, face towards the viewer's default
# camera) and scaled up to fill the view. The downloadable .ply keeps the canonical metric frame.
VIEWER_SCALE = 4.0
VIEWER_FILE = "head_viewer.ply"
RESULTS = "results"
"""the sub-folder of the app's folder that holds one folder per result"""
DELIVERED_JSON = ("reconstruction.json", "edit.json")

@dataclass
class AppConfig:
    """How `perchead app` loads its models and limits its work (every field is a command option)."""

    checkpoint: str = "demo"
    """reconstruction checkpoint: folder, Hugging Face hub id, or "demo" (bundled)"""
    edit_checkpoint: str | None = None
    """editing checkpoint folder or hub id; None = the bundled demo editing checkpoint when installed"""
    clip: str | None = None
    """CLIP hub id or folder replacing the one the editing checkpoint names"""
    device: str = "auto"
    size: int = 512
    """side of every rendered view and of the turntable, pixels"""
    frames: int = 60
    """turntable frames"""
    video_size: int | None = 384
    """side of the turntable frames (None: ``size``)"""
    fit_steps: int = FitConfig.steps
    """steps of the fit to the photo (0: the network's prediction alone)"""
    edit_fit_steps: int = MapFitConfig.steps
    """steps of the fit of an edited head to its painted map (0: the editing network's Gaussians alone)"""
    max_upload_mb: float = 20.0
    """uploads larger than this are refused"""
    max_pixels: int = 50_000_000
    """photos with more pixels than this are refused (a 50 Mpx photo is far more than the 512 px crop needs)"""
    work_dir: Path | None = None
    """the folder in which the app makes its own folder (``perchead-app-*``: uploads, gradio's copies and
    results); default: the system's temporary folder"""
    keep_results: bool = False
    """keep every result: none is replaced by its session's next one, none is deleted on exit (uploads still are)"""
    max_results: int = 16
    """result folders on disk at most, all sessions together (older ones are deleted); ignored with keep_results"""

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.max_results < 1:
            raise ValueError(f"max_results must be at least 1, got {self.max_results}")


@dataclass
class Result:
    """What a handler produced: files (by role) or, when ``ok`` is false, only a message for the page."""

    ok: bool
    message: str
    files: dict[str, Path] = field(default_factory=dict)
    """roles: "ply", "splat", "video" (when rendered), "views", "viewer", "json", and for edits "map"."""
    seconds: float = 0.0

    @property
    def downloads(self) -> list[Path]:
        """The files offered for download, in a stable order."""
        return [self.files[k] for k in ("ply", "splat", "video", "views", "map", "json") if k in self.files]


@dataclass
class MapResult:
    """A map to paint on: class ids and their colour picture, or a message."""

    ok: bool
    message: str
    labels: np.ndarray | None = None
    """uint8 [S, S] class ids"""
    picture: np.ndarray | None = None
    """uint8 [S, S, 3] class colours"""


def failure(exc: BaseException, *uploads: str | Path | None) -> str:
    """The page's sentence for a failed request. Server-side paths of ``uploads`` (in gradio's cache) are
    replaced by the file names the person knows."""
    message = _failure(exc)
    for path in uploads:
        if path is not None and str(path):
            message = message.replace(str(path), Path(path).name)
    return message


def _failure(exc: BaseException) -> str:
    if isinstance(exc, NoFaceError):
        return ("No face was found in the photo. Upload a portrait in which one face is clearly visible "
                "(frontal or three-quarter view, not tiny).")
    if isinstance(exc, (ValueError, FileNotFoundError, MapError)):
        return str(exc)
    if isinstance(exc, (OSError, RuntimeError)):
        return f"{type(exc).__name__}: {exc}"
    return f"Something went wrong ({type(exc).__name__}: {exc}); the server log has the details."


def without_server_paths(value):
    """``value`` (parsed JSON) with every absolute path replaced by its last part: the files the page hands
    out name the uploaded file and the checkpoint, never a folder of the server."""
    if isinstance(value, dict):
        return {k: without_server_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_server_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def viewer_gaussians(g: Gaussians, scale: float = VIEWER_SCALE) -> Gaussians:
    """The copy of ``g`` shown in the browser's splat viewer: turned 180 degrees about x and scaled.

    Only the colour's constant (DC) term is kept: it does not change under rotation, the viewer draws
    nothing else, and higher SH bands would need rotating too.
    """
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=g.means.dtype)
    w, x, y, z = g.quats.unbind(-1)
    # (0, 1, 0, 0) * q: the Gaussian's own rotation followed by the 180 degree turn about x
    quats = torch.stack([-x, w, -z, y], dim=-1)
    return g.replace(means=g.means * flip * scale, log_scales=g.log_scales + math.log(scale), quats=quats,
                     sh=g.sh[..., :1, :])


class PercheadApp:
    """The models and the handlers behind the page. One request at a time (the page queues the rest)."""

    def __init__(self, config: AppConfig | None = None, reconstructor: Reconstructor | None = None) -> None:
        self.config = config or AppConfig()
        cfg = self.config
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._closed = False
        self._gradio_temp_before: str | None = None
        self._latest: dict[tuple[str, str], Path] = {}
        """(session, kind) -> the session's latest result folder of that kind, replaced by its next one"""
        self._uploads: dict[str, set[Path]] = {}
        """session -> the uploads (in gradio's folder, i.e. :attr:`root`) its requests used"""
        self.rec = reconstructor or Reconstructor(self._render_config(cfg.checkpoint))
        self.edit_rec: Reconstructor | None = None
        self.edit_error: str | None = None
        self._load_editing()
        # Made once the models have loaded (a checkpoint that fails to load leaves nothing behind). Everything a
        # person's photo becomes lives in here: gradio's uploads and copies (GRADIO_TEMP_DIR, set by ui.launch)
        # and the results, under RESULTS (inside gradio's folder, so gradio serves them without a copy).
        if cfg.work_dir is not None:
            Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="perchead-app-", dir=cfg.work_dir)).resolve()
        self.results_dir = self.root / RESULTS
        self.results_dir.mkdir()

    # -- setup ----------------------------------------------------------------------------------------------
    def _render_config(self, checkpoint: str) -> ReconstructConfig:
        c = self.config
        return ReconstructConfig(checkpoint=checkpoint, device=c.device, size=c.size, frames=c.frames,
                                 video_size=c.video_size, max_pixels=c.max_pixels,
                                 fit=FitConfig(steps=c.fit_steps))

    def _load_editing(self) -> None:
        """Load the editing network and its CLIP. The bundled demo missing (or its CLIP not available) only
        disables the Edit tab, with the reason shown there; a checkpoint the user named must load."""
        from perchead.edit import load_edit_network

        explicit = self.config.edit_checkpoint is not None
        source = self.config.edit_checkpoint if explicit else str(DEMO_EDIT_CHECKPOINT)
        if not explicit and not (DEMO_EDIT_CHECKPOINT / WEIGHTS_NAME).is_file():
            self.edit_error = (f"Editing is not available: the bundled demo editing checkpoint is not in this "
                               f"installation ({DEMO_EDIT_CHECKPOINT}). Start the app with "
                               "`--edit-checkpoint FOLDER` (an editing checkpoint: EditNetwork.save_pretrained or "
                               "`perchead train --stage edit`).")
            return
        try:
            net = load_edit_network(source, clip=self.config.clip)
            net.clip  # noqa: B018 -- load CLIP now: a missing CLIP must show up at start, not at the first click
        except Exception as exc:
            if explicit:
                raise
            self.edit_error = (f"Editing is not available: the demo editing checkpoint {source} could not be "
                               f"loaded: {exc}")
            log.warning("%s", self.edit_error)
            return
        self.edit_rec = Reconstructor(self._render_config(source), model=net)

    @property
    def edit_notice(self) -> str:
        """What the editing checkpoint's authors say about it (the bundled demo: text prompts are not understood)."""
        return self.edit_rec.model.notice if self.edit_rec is not None else ""

    def take_gradio_temp_dir(self) -> None:
        """Make :attr:`root` gradio's temporary folder (uploads, copies of what the page shows). gradio reads
        ``GRADIO_TEMP_DIR`` when components are built and while it serves, so it stays set until :meth:`close`."""
        if os.environ.get("GRADIO_TEMP_DIR") != str(self.root):
            self._gradio_temp_before = os.environ.get("GRADIO_TEMP_DIR")
            os.environ["GRADIO_TEMP_DIR"] = str(self.root)

    def close(self) -> None:
        """Delete the app's folder: every upload, gradio's copies and (unless ``keep_results``) the results.
        Safe to call more than once; requests still running write nothing after it."""
        self._closed = True
        if os.environ.get("GRADIO_TEMP_DIR") == str(self.root):  # a later page must not write into a deleted folder
            if self._gradio_temp_before is None:
                os.environ.pop("GRADIO_TEMP_DIR")
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._gradio_temp_before
        if self.config.keep_results:
            for path in self.root.glob("*"):
                if path != self.results_dir:
                    _remove(path)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def end_session(self, session: str) -> None:
        """The page of ``session`` was closed: delete its results and the uploads no other open page uses."""
        with self._lock:
            if not self.config.keep_results:
                for key in [k for k in self._latest if k[0] == session]:
                    shutil.rmtree(self._latest.pop(key), ignore_errors=True)
            mine = self._uploads.pop(session, set())
            others = set().union(*self._uploads.values())
            for path in mine - others:
                _remove(path)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # gradio's folder for that upload, when empty

    def _note_upload(self, session: str | None, path: str | Path | None) -> None:
        """Remember an upload a session used, to delete it with the session (only gradio's, in :attr:`root`)."""
        if session and path and str(path):
            p = Path(path).resolve()
            if p.is_relative_to(self.root) and not p.is_relative_to(self.results_dir):
                self._uploads.setdefault(session, set()).add(p)

    # -- shared plumbing ------------------------------------------------------------------------------------
    def check_upload(self, path: str | Path | None, what: str) -> Path:
        """The uploaded file, or a ValueError saying why it cannot be used."""
        if path is None or str(path) == "":
            raise ValueError(f"no {what} was uploaded: choose a file first")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"the uploaded {what} ({path.name}) is gone from the server; upload it again")
        size_mb = path.stat().st_size / 2**20
        if size_mb > self.config.max_upload_mb:
            raise ValueError(f"the {what} is {size_mb:.1f} MB, above this app's limit of "
                             f"{self.config.max_upload_mb:g} MB: upload a smaller file")
        return path

    def check_image(self, path: Path) -> None:
        """Refuse corrupt, empty and over-large pictures before any work (header only for JPEGs)."""
        open_image(path, max_pixels=self.config.max_pixels)

    def _new_result_dir(self, kind: str, session: str | None = None) -> Path:
        """A fresh folder for one request's files. It replaces the session's previous result of this ``kind``
        (the page shows only the newest), and the oldest folders beyond ``max_results`` are deleted; with
        ``keep_results`` nothing is."""
        if self._closed:
            raise RuntimeError("the app is shutting down")
        if not self.config.keep_results:
            if session and (session, kind) in self._latest:
                shutil.rmtree(self._latest.pop((session, kind)), ignore_errors=True)
            folders = sorted((p for p in self.results_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                             key=lambda p: p.stat().st_mtime)
            for old in folders[:max(0, len(folders) - self.config.max_results + 1)]:
                shutil.rmtree(old, ignore_errors=True)
        out = self.results_dir / f"{kind}-{int(time.time())}-{next(self._counter)}"
        if session:
            self._latest[(session, kind)] = out
        return out

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        with self._lock, torch.inference_mode():
            yield

    def _write(self, rec: Reconstructor, result: Reconstruction, out: Path, progress: Progress,
               extra: Callable[[Path], None] | None = None) -> None:
        """Write every file of ``result`` (and the browser viewer's copy, and ``extra``'s) into ``out``: all of
        them, or none."""
        progress(0.9, "writing the files")
        with staged_output(out) as stage:
            rec.write(result, stage)
            save_ply(viewer_gaussians(result.gaussians), stage / VIEWER_FILE)
            if extra is not None:
                extra(stage)
            for name in DELIVERED_JSON:
                if (stage / name).is_file():
                    data = without_server_paths(json.loads((stage / name).read_text()))
                    (stage / name).write_text(json.dumps(data, indent=1) + "\n")
        if self._closed:  # shut down while this request ran: its files must not outlive the app
            self.close()
            raise RuntimeError("the app is shutting down")

    @staticmethod
    def _files(out: Path, extra: dict[str, str] | None = None) -> dict[str, Path]:
        names = {"ply": "head.ply", "splat": "head.splat", "video": "turntable.mp4", "views": "views.png",
                 "viewer": VIEWER_FILE, "json": "reconstruction.json", **(extra or {})}
        return {role: out / name for role, name in names.items() if (out / name).is_file()}

    # -- Reconstruct tab ------------------------------------------------------------------------------------
    def reconstruct(self, photo: str | Path | None, progress: Progress | None = None,
                    session: str | None = None) -> Result:
        """An uploaded photo -> the reconstruction's files (or a message saying why not). ``session``: the
        page's session, whose previous reconstruction this one replaces (see :meth:`end_session`)."""
        progress = progress or no_progress
        start = time.perf_counter()
        self._note_upload(session, photo)
        try:
            path = self.check_upload(photo, "photo")
            self.check_image(path)
            with self._request():
                result = self.rec.reconstruct(path, progress)
                out = self._new_result_dir("reconstruct", session)
                self._write(self.rec, result, out, progress)
        except Exception as exc:  # every failure becomes the page's message (see module docstring)
            if not isinstance(exc, (ValueError, OSError)):
                log.exception("reconstruct failed")
            return Result(False, failure(exc, photo), seconds=time.perf_counter() - start)
        seconds = time.perf_counter() - start
        warnings, times = result.preprocessed.warnings, result.times
        notes = f" Note: {'; '.join(warnings)}." if warnings else ""
        message = (f"Reconstructed {len(result.gaussians):,} Gaussians in {seconds:.1f} s "
                   f"(preprocess {times.preprocess:.1f} s, network {times.network:.1f} s, fit {times.fit:.1f} s, "
                   f"render {times.render:.1f} s, write {times.write:.1f} s).{notes}")
        return Result(True, message, self._files(out), seconds)

    # -- Edit tab: the map ------------------------------------------------------------------------------------
    def _edit_available(self) -> Reconstructor:
        if self.edit_rec is None:
            raise RuntimeError(self.edit_error or "editing is not available")
        return self.edit_rec

    def map_size(self) -> int:
        """Side of the maps shown for painting: the crop size (finer than the network's input, resized to it)."""
        rec = self.edit_rec or self.rec
        return rec.config.crop_size

    def _map(self, labels: np.ndarray, message: str) -> MapResult:
        labels = resize_segmentation(labels, self.map_size())
        return MapResult(True, message, labels, colorize(labels))

    def map_from_photo(self, photo: str | Path | None, session: str | None = None) -> MapResult:
        """A photo -> its head crop's class map (the offline MediaPipe segmenter), to paint on."""
        self._note_upload(session, photo)
        try:
            rec = self._edit_available()
            path = self.check_upload(photo, "photo")
            self.check_image(path)
            with self._request():
                pre = rec.preprocess(path)
                seg = segment_photo(pre.crop, None, pre.mask)
        except Exception as exc:
            return MapResult(False, failure(exc, photo))
        return self._map(seg.labels, f"Map of {Path(photo).name} ({seg.source}); paint on it, then render.")

    def map_from_file(self, path: str | Path | None, session: str | None = None) -> MapResult:
        """An uploaded map PNG (8-bit class ids 0..18, or the class colours) -> the map to paint on."""
        self._note_upload(session, path)
        try:
            self._edit_available()
            p = self.check_upload(path, "map")
            labels = load_segmentation(p)
            if labels.shape[0] != labels.shape[1]:
                raise MapError(f"the map is {labels.shape[1]}x{labels.shape[0]} pixels but maps must be square")
        except Exception as exc:
            return MapResult(False, failure(exc, path))
        return self._map(labels, f"Loaded the map {Path(path).name}; paint on it, then render.")

    def example_map(self) -> MapResult:
        """The bundled example photo's map: what the Edit tab shows before anything is uploaded."""
        return self.map_from_photo(EXAMPLE_PHOTO)

    # -- Edit tab: render ---------------------------------------------------------------------------------
    def render_edit(self, editor_value: dict | np.ndarray | None, style_text: str | None = None,
                    style_image: str | Path | None = None, progress: Progress | None = None,
                    session: str | None = None) -> Result:
        """A painted map (image-editor value, or a class-colour picture) + a style -> the edited head's files.

        The reference image wins when both styles are given.
        """
        progress = progress or no_progress
        start = time.perf_counter()
        self._note_upload(session, style_image)
        try:
            rec = self._edit_available()
            net = rec.model
            if isinstance(editor_value, np.ndarray):
                editor_value = {"background": editor_value, "layers": []}
            progress(0.02, "reading the painted map")
            labels = labels_from_editor(editor_value)
            labels = resize_segmentation(labels, net.config.image_size)
            if not (labels != SEG["background"]).any():
                raise MapError("the map is all background: paint a head (skin, hair, ...) before rendering")
            style_path = None
            if style_image is not None and str(style_image) != "":
                style_path = self.check_upload(style_image, "reference image")
                self.check_image(style_path)
            elif not (style_text or "").strip():
                raise ValueError("no style: type a description (e.g. \"a person with red curly hair\") or upload a "
                                 "reference image")
            with self._request():
                progress(0.1, "encoding the style with CLIP")
                if style_path is not None:
                    from perchead.preprocess import load_image

                    style = image_style(net, load_image(style_path, max_side=1024)[..., :3], None, rec.device)
                    style_desc = {"image": style_path.name}
                else:
                    style = net.style_from_text(style_text.strip())
                    style_desc = {"text": style_text.strip()}
                progress(0.2, "running the editing network")
                g = generate_head(net, labels, style, rec.device, rec.render_device)
                fit = MapFitConfig(steps=self.config.edit_fit_steps)

                def step(i: int, n: int, loss: float) -> None:
                    progress(0.3 + 0.2 * i / n, f"fitting the head to the painted map: step {i}/{n}")

                if fit.steps:
                    step(0, fit.steps, 0.0)
                g, followed = follow_map(net, g, labels, fit, rec.config.backend, progress=step)
                pre = map_preprocessed(labels, rec.config.crop_size, "painted map")
                info = {"checkpoint": rec.config.checkpoint, "clip": net.edit_config.clip,
                        "notice": self.edit_notice or None, "segmentation": "painted in perchead app",
                        "style": style_desc, **followed}

                out = self._new_result_dir("edit", session)
                self._write(rec, rec.render_result(g, pre, progress=progress, sharpen=fit.steps == 0), out,
                            progress, lambda stage: write_edit_files(stage, labels, info))
        except Exception as exc:
            if not isinstance(exc, (ValueError, OSError)):
                log.exception("edit failed")
            return Result(False, failure(exc, style_image), seconds=time.perf_counter() - start)
        seconds = time.perf_counter() - start
        described = f"text \"{style_desc['text']}\"" if "text" in style_desc else f"image {style_desc['image']}"
        # What was measured (the map) apart from what was not (the style): an IoU beside a head whose look
        # ignored the style must not read as "it worked".
        note = " (and read the note on this editing checkpoint above)" if self.edit_notice else ""
        return Result(True, f"Rendered the edited head (style: {described}) in {seconds:.1f} s.\n\n"
                      f"**Measured**, how closely the shape follows the painted map: {fidelity_line(followed)}.\n\n"
                      f"**Not measured**: whether the look follows the style; judge it in the views{note}.",
                      self._files(out, {"map": "segmentation_color.png", "json": "edit.json"}), seconds)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


__all__ = ["DEMO_EDIT_CHECKPOINT", "EXAMPLE_PHOTO", "RESULTS", "VIEWER_FILE", "VIEWER_SCALE", "AppConfig",
           "MapResult", "PercheadApp", "Result", "failure", "viewer_gaussians", "without_server_paths"]

"""Image and identity metrics with pinned settings (docs/evaluation.md).

Every metric takes ``pred`` and ``target`` as ``[B, 3, H, W]`` float tensors in [0, 1] (``as_image_batch``
also accepts uint8 / float numpy ``HxWx3`` or ``BxHxWx3``) and an optional head mask ``[B, 1, H, W]``, and
returns a :class:`MetricValues` with one float64 value per sample. Settings are fixed per metric and returned
by ``settings()`` so that they can be printed next to every result.

Unavailable metrics (package not installed, weights absent offline) raise :class:`MetricUnavailable` when
built; :class:`MetricSuite` turns that into one clear message and an empty (NaN) column, never a made-up
value. Identity metrics return NaN for a pair where a face is not found and count it.
"""

from __future__ import annotations

import csv
import importlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..losses.base import check_image_pair, cosine_distance, resize
from ..losses.pixel import LPIPSLoss
from ..losses.pixel import ssim as _ssim
from ..preprocess.identity import DlibFaceEncoder, FaceIdentityUnavailable

log = logging.getLogger(__name__)

# SSIM constants (Wang et al. 2004; skimage ``gaussian_weights=True``): printed with every result.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# torchvision's ImageNet AlexNet weights, which lpips.LPIPS(net="alex") loads through torch.hub.
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
# The files dreamsim's ``download_weights`` checks for its default "ensemble" model; if all are in the cache
# folder it never downloads.
DREAMSIM_ENSEMBLE_FILES = (
    "dino_vitb16_pretrain.pth", "clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_pretrain.pth.tar",
    "dino_vitb16_lora", "clip_vitb16_lora", "open_clip_vitb16_lora",
)


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (package or weights missing); the message says what to install or copy."""


# ---------------------------------------------------------------------------------------------- inputs
def as_image_batch(x: torch.Tensor | np.ndarray, name: str = "image") -> torch.Tensor:
    """``[B, 3, H, W]`` float32 in [0, 1] from a tensor of that shape or ``[3, H, W]``, or a numpy image.

    Numpy input is channels-last (``HxWx3`` or ``BxHxWx3``); uint8 is divided by 255, float must be in [0, 1].
    """
    if isinstance(x, np.ndarray):
        if x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ValueError(f"{name}: numpy images must be HxWx3 or BxHxWx3 RGB, got shape {x.shape}")
        if x.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            raise ValueError(f"{name}: numpy images must be uint8 or float in [0,1], got dtype {x.dtype}")
        t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
    elif isinstance(x, torch.Tensor):
        t = x[None] if x.ndim == 3 else x
        if t.ndim == 4 and t.shape[1] == 3 and t.dtype == torch.uint8:
            t = t.float() / 255.0
    else:
        raise ValueError(f"{name}: expected a torch.Tensor [B,3,H,W] or a numpy HxWx3 image, got {type(x)}")
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B,3,H,W] (channels first, RGB), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be float in [0,1] or uint8, got dtype {t.dtype}")
    t = t.float()
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        raise ValueError(f"{name} values must lie in [0,1], found [{lo:.3g}, {hi:.3g}]; divide uint8 by 255")
    return t


def as_mask_batch(mask: torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` float mask (1 = head) matching ``like`` ``[B, 3, H, W]``; accepts HxW / BxHxW too."""
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    if m.dtype == torch.bool:
        m = m.float()
    elif m.dtype == torch.uint8:
        m = m.float() / 255.0
    m = m.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    b, _, h, w = like.shape
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != (h, w) or m.shape[0] not in (1, b):
        raise ValueError(f"mask must be [B,1,H,W] matching the images {tuple(like.shape)}, "
                         f"got {tuple(m.shape)}")
    if float(m.min()) < 0.0 or float(m.max()) > 1.0:
        raise ValueError("mask values must lie in [0,1] (1 = inside the head)")
    return m.expand(b, 1, h, w).to(like.device)


def _pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = as_image_batch(pred, "pred"), as_image_batch(target, "target")
    check_image_pair(pred, target)
    return pred, target


def _mask_weights(mask: torch.Tensor) -> torch.Tensor:
    total = mask.flatten(1).sum(dim=1)
    empty = (total <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask is empty for sample(s) {empty}: nothing to measure")
    return total


# ------------------------------------------------------------------------------------------- PSNR / SSIM
def psnr(pred, target, mask=None, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB, float64: ``10 log10(data_range^2 / MSE)``, MSE over all channels and pixels.

    With ``mask`` the MSE is a weighted mean over the masked pixels only (all channels). Identical images
    give ``+inf`` (no cap: a capped number would be made up; the report says how many were infinite).
    """
    pred, target = _pair(pred, target)
    sq = (pred.double() - target.double()) ** 2
    if mask is None:
        mse = sq.flatten(1).mean(dim=1)
    else:
        m = as_mask_batch(mask, pred).double()
        mse = (sq * m).flatten(1).sum(dim=1) / (_mask_weights(m) * sq.shape[1])
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(pred, target, mask=None) -> torch.Tensor:
    """Per-sample SSIM, float64 (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1).

    The computation is ``perchead.losses.pixel.ssim`` (the training loss's SSIM, equal to skimage's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``):
    the SSIM map is averaged over channels and the positions where the whole window lies inside the image.
    With ``mask``, the map is averaged over the masked positions only (mask weights at the window centres).
    """
    pred, target = _pair(pred, target)
    if mask is None:
        return _ssim(pred, target).double()
    m = as_mask_batch(mask, pred)
    ssim_map = _ssim(pred, target, return_map=True).double().mean(dim=1, keepdim=True)  # [B,1,H-10,W-10]
    r = (SSIM_WINDOW - 1) // 2
    m = m[..., r : m.shape[-2] - r, r : m.shape[-1] - r].double()
    return (ssim_map * m).flatten(1).sum(dim=1) / _mask_weights(m)


# --------------------------------------------------------------------------------------------- metrics
@dataclass
class MetricValues:
    """Per-sample values (float64, NaN where not measurable) and counts of faces not found."""

    values: torch.Tensor
    faces_not_found: dict[str, int] = field(default_factory=dict)


class Metric:
    """A metric with pinned settings: ``metric(pred, target, mask=None) -> MetricValues``."""

    name: str = ""
    higher_is_better: bool = True
    uses_mask: bool = False

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def compute(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> MetricValues:
        raise NotImplementedError

    def __call__(self, pred, target, mask=None) -> MetricValues:
        pred, target = _pair(pred, target)
        return self.compute(pred, target, None if mask is None else as_mask_batch(mask, pred))


class PSNRMetric(Metric):
    name, higher_is_better, uses_mask = "psnr", True, True

    def settings(self) -> dict[str, Any]:
        return {"data_range": 1.0, "mse": "mean over RGB channels and pixels (masked: over mask pixels)",
                "identical_images": "+inf (not capped)"}

    def compute(self, pred, target, mask) -> MetricValues:
        return MetricValues(psnr(pred, target, mask))


class SSIMMetric(Metric):
    name, higher_is_better, uses_mask = "ssim", True, True

    def settings(self) -> dict[str, Any]:
        return {"window": f"gaussian {SSIM_WINDOW}x{SSIM_WINDOW}", "sigma": SSIM_SIGMA, "K1": SSIM_K1,
                "K2": SSIM_K2, "data_range": 1.0, "use_sample_covariance": False,
                "average": "channels and valid window positions (masked: mask at window centres)",
                "implementation": "perchead.losses.pixel.ssim (= skimage structural_similarity)"}

    def compute(self, pred, target, mask) -> MetricValues:
        return MetricValues(ssim(pred, target, mask))


def _import(module: str, what: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MetricUnavailable(f"{what} needs the `{module.split('.')[0]}` package, which does not import "
                                f"here ({exc}); {install}") from exc


class LPIPSMetric(Metric):
    """LPIPS v0.1 (Zhang et al. 2018) through the ``lpips`` package: AlexNet, inputs mapped to [-1, 1]."""

    name, higher_is_better = "lpips", False
    NET, VERSION = "alex", "0.1"

    def __init__(self, device: str | torch.device = "cpu"):
        _import("lpips", "LPIPS", "`pip install lpips` (it needs torchvision) where torchvision works; "
                "LPIPS is left empty until then")
        _import("torchvision", "LPIPS", "install torchvision matching your torch (`pip install lpips "
                "torchvision`) where it works; LPIPS is left empty until then")
        weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS
        try:  # the training loss wraps exactly this network and input mapping
            self.loss = LPIPSLoss(net=self.NET).to(device)
        except RuntimeError as exc:
            raise MetricUnavailable(f"LPIPS could not be built: {exc}. It loads torchvision's AlexNet "
                                    f"weights ({weights}); offline, copy them there.") from exc
        self.device = torch.device(device)

    def settings(self) -> dict[str, Any]:
        return {"package": "lpips", "net": self.NET, "version": self.VERSION,
                "input_range": "[-1, 1] (2x - 1)", "spatial_average": True,
                "mask": "not used (images are composited on white)"}

    @torch.no_grad()
    def compute(self, pred, target, mask) -> MetricValues:
        values, _ = self.loss.compute(pred.to(self.device), target.to(self.device))
        return MetricValues(values.double().cpu())


class DreamSimMetric(Metric):
    """DreamSim (Fu et al. 2023) "ensemble" model through the ``dreamsim`` package: 1 - cosine of embeddings.

    ``cache_dir`` holds its weights (``dreamsim`` downloads them there on first use). Unless
    ``allow_download`` is set, a cache folder without them is an error instead of a download attempt.
    """

    name, higher_is_better = "dreamsim", False
    IMG_SIZE = 224

    def __init__(self, cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 allow_download: bool = False):
        pkg = _import("dreamsim", "DreamSim", "`pip install dreamsim` (it needs torchvision); DreamSim is "
                      "left empty until then")
        self.cache_dir = Path(cache_dir or default_dreamsim_dir()).expanduser()
        missing = [f for f in DREAMSIM_ENSEMBLE_FILES if not (self.cache_dir / f).exists()]
        if missing and not allow_download:
            raise MetricUnavailable(
                f"DreamSim weights are not in {self.cache_dir} (missing {', '.join(missing)}). Run once with "
                "internet and allow_download=True, or copy a dreamsim cache folder there."
            )
        try:
            self.model, _ = pkg.dreamsim(pretrained=True, device=str(device), cache_dir=str(self.cache_dir))
        except Exception as exc:  # network errors, incompatible versions
            raise MetricUnavailable(f"DreamSim could not be loaded from {self.cache_dir}: {exc}") from exc
        self.device = torch.device(device)

    def settings(self) -> dict[str, Any]:
        return {"package": "dreamsim",
                "model": "ensemble (dino_vitb16 + clip_vitb16 + open_clip_vitb16, LoRA)",
                "input": f"RGB [0,1] resized to {self.IMG_SIZE}x{self.IMG_SIZE} bicubic (antialiased)",
                "distance": "1 - cosine similarity of normalised embeddings",
                "cache_dir": str(self.cache_dir),
                "mask": "not used (images are composited on white)"}

    @torch.no_grad()
    def compute(self, pred, target, mask) -> MetricValues:
        size = (self.IMG_SIZE, self.IMG_SIZE)
        a = resize(pred, size, "bicubic").clamp(0, 1).to(self.device)
        b = resize(target, size, "bicubic").clamp(0, 1).to(self.device)
        # one sample at a time: dreamsim squeezes batch dimensions of size one inside its embedding
        values = [float(self.model(a[i : i + 1], b[i : i + 1]).reshape(-1)[0]) for i in range(len(a))]
        return MetricValues(torch.tensor(values, dtype=torch.float64))


def default_dreamsim_dir() -> Path:
    return Path(os.environ.get("PERCHEAD_DREAMSIM_DIR", "~/.cache/perchead/dreamsim")).expanduser()


def default_insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser()


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float [0,1] -> C-contiguous HxWx3 uint8 RGB (what face detectors and dlib's descriptor take;
    a channels-first tensor would otherwise give a strided view that dlib refuses)."""
    rgb = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(rgb)


class IdentityMetric(Metric):
    """Shared loop of the face-identity distances: embed each image's largest face, NaN + count if none."""

    higher_is_better = False

    def embed(self, rgb: np.ndarray) -> np.ndarray | None:
        """128/512-D embedding of the largest face in a uint8 RGB image, or None if no face is found."""
        raise NotImplementedError

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        raise NotImplementedError

    def compute(self, pred, target, mask) -> MetricValues:
        values, missing = [], {"pred": 0, "target": 0, "pairs": 0}
        for p, t in zip(pred, target, strict=True):
            ep, et = self.embed(_to_uint8(p)), self.embed(_to_uint8(t))
            missing["pred"] += ep is None
            missing["target"] += et is None
            if ep is None or et is None:
                missing["pairs"] += 1
                values.append(math.nan)
            else:
                values.append(self.distance(ep, et))
        return MetricValues(torch.tensor(values, dtype=torch.float64), missing)


class DlibIdentityMetric(IdentityMetric):
    """dlib's ResNet face descriptor (:class:`perchead.preprocess.identity.DlibFaceEncoder`, 128-D, ships
    offline): the project's detectors (dlib's HOG by default), dlib's 5- or 68-point alignment, no jitter.
    ``distance="euclidean"`` is dlib's own convention (same person below ~0.6); ``"cosine"`` gives 1 - cosine
    similarity, comparable in form to the ArcFace column.
    """

    name = "id_dlib"

    def __init__(self, distance: Literal["euclidean", "cosine"] = "euclidean", landmarks: Literal[5, 68] = 5,
                 detectors: Sequence[str] = ("dlib",)):
        try:
            self.encoder = DlibFaceEncoder(distance, landmarks, detectors)
        except FaceIdentityUnavailable as exc:
            raise MetricUnavailable(str(exc)) from exc

    def settings(self) -> dict[str, Any]:
        return {**self.encoder.settings(), "no_face": "NaN for the pair, counted"}

    def embed(self, rgb: np.ndarray) -> np.ndarray | None:
        return self.encoder.embed(rgb)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return self.encoder.distance(a, b)


class ArcFaceMetric(IdentityMetric):
    """ArcFace through insightface's ``FaceAnalysis`` (RetinaFace detector + ArcFace R50 of "buffalo_l").

    The model pack must already be at ``<root>/models/<name>`` (insightface would download it otherwise):
    this metric never downloads. Distance: 1 - cosine similarity of the normalised embeddings.
    """

    name = "id_arcface"

    def __init__(self, root: str | Path | None = None, model_name: str = "buffalo_l",
                 det_size: tuple[int, int] = (640, 640)):
        app_mod = _import("insightface.app", "ArcFace", "`pip install insightface onnxruntime`; ArcFace is "
                          "left empty until then")
        _import("onnxruntime", "ArcFace", "`pip install onnxruntime`; ArcFace is left empty until then")
        self.root = Path(root or default_insightface_root()).expanduser()
        model_dir = self.root / "models" / model_name
        if not any(model_dir.glob("*.onnx")):
            raise MetricUnavailable(
                f"ArcFace model pack {model_name!r} not found in {model_dir} (no .onnx files); copy "
                f"insightface's {model_name} folder there (this metric never downloads)"
            )
        try:
            self.app = app_mod.FaceAnalysis(name=model_name, root=str(self.root),
                                            allowed_modules=["detection", "recognition"],
                                            providers=["CPUExecutionProvider"])
            self.app.prepare(ctx_id=-1, det_size=det_size)
        except Exception as exc:
            raise MetricUnavailable(f"ArcFace ({model_dir}) could not be loaded: {exc}") from exc
        self.model_name, self.det_size = model_name, det_size

    def settings(self) -> dict[str, Any]:
        return {"package": "insightface", "model_pack": self.model_name, "root": str(self.root),
                "detector_size": list(self.det_size), "face": "largest detected",
                "distance": "1 - cosine similarity of normed_embedding",
                "no_face": "NaN for the pair, counted"}

    def embed(self, rgb: np.ndarray) -> np.ndarray | None:
        faces = self.app.get(np.ascontiguousarray(rgb[..., ::-1]))  # insightface takes BGR
        if not faces:
            return None
        face = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        return np.asarray(face.normed_embedding, dtype=np.float64)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(cosine_distance(torch.from_numpy(a), torch.from_numpy(b), dim=0))


# ------------------------------------------------------------------------------------------------ suite
@dataclass
class MetricConfig:
    """Where each metric finds its weights and the few choices left open (all printed with the results)."""

    device: str = "cpu"
    dreamsim_cache_dir: str | None = None
    """DreamSim weight folder (default $PERCHEAD_DREAMSIM_DIR or ~/.cache/perchead/dreamsim)"""
    dreamsim_allow_download: bool = False
    insightface_root: str | None = None
    """folder holding models/<arcface_model>/ (default $INSIGHTFACE_HOME or ~/.insightface)"""
    arcface_model: str = "buffalo_l"
    dlib_distance: Literal["euclidean", "cosine"] = "euclidean"
    dlib_landmarks: Literal[5, 68] = 5
    face_detectors: tuple[str, ...] = ("dlib",)
    """detectors for the dlib identity distance (perchead.preprocess.DETECTORS); mediapipe finds profiles"""


METRICS: dict[str, tuple[str, Callable[[MetricConfig], Metric]]] = {
    "psnr": ("PSNR (dB), higher is better", lambda c: PSNRMetric()),
    "ssim": ("SSIM, higher is better", lambda c: SSIMMetric()),
    "lpips": ("LPIPS alex v0.1, lower is better", lambda c: LPIPSMetric(c.device)),
    "dreamsim": ("DreamSim ensemble, lower is better",
                 lambda c: DreamSimMetric(c.dreamsim_cache_dir, c.device, c.dreamsim_allow_download)),
    "id_arcface": ("ArcFace 1 - cosine, lower is better",
                   lambda c: ArcFaceMetric(c.insightface_root, c.arcface_model)),
    "id_dlib": ("dlib ResNet face descriptor distance, lower is better",
                lambda c: DlibIdentityMetric(c.dlib_distance, c.dlib_landmarks, c.face_detectors)),
}
PAPER_METRICS = ("psnr", "ssim", "lpips", "dreamsim", "id_arcface")


def build_metric(name: str, config: MetricConfig | None = None) -> Metric:
    """The metric called ``name`` (one of ``METRICS``); MetricUnavailable says why if it cannot run."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[name][1](config or MetricConfig())


def available_metrics(config: MetricConfig | None = None) -> dict[str, str | None]:
    """Every metric name -> None if it works on this machine, else the reason why not (builds each once)."""
    out: dict[str, str | None] = {}
    for name in METRICS:
        try:
            build_metric(name, config)
            out[name] = None
        except MetricUnavailable as exc:
            out[name] = str(exc)
    return out


class MetricSuite:
    """Computes the requested metrics per batch and keeps one row per sample.

    Metrics that cannot run are reported once (logged and kept in ``unavailable``) and their column stays
    NaN (empty in the CSV). Identity metrics count the faces they did not find (``faces_not_found``).
    """

    def __init__(self, names: Sequence[str] = PAPER_METRICS + ("id_dlib",),
                 config: MetricConfig | None = None):
        self.config = config or MetricConfig()
        self.names = tuple(names)
        self.metrics: dict[str, Metric] = {}
        self.unavailable: dict[str, str] = {}
        for name in self.names:
            try:
                self.metrics[name] = build_metric(name, self.config)
            except MetricUnavailable as exc:
                self.unavailable[name] = str(exc)
                log.warning("metric %s unavailable, its column stays empty: %s", name, exc)
        self.rows: list[dict[str, Any]] = []
        self.faces_not_found: dict[str, dict[str, int]] = {
            n: {"pred": 0, "target": 0, "pairs": 0}
            for n, m in self.metrics.items() if isinstance(m, IdentityMetric)
        }

    def settings(self) -> dict[str, Any]:
        """Every requested metric's pinned settings, or the reason it is unavailable."""
        return {n: self.metrics[n].settings() if n in self.metrics else {"unavailable": self.unavailable[n]}
                for n in self.names}

    def update(self, pred, target, mask=None,
               info: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Score one batch; ``info`` gives per-sample columns (subject, views, ...). Returns the new rows."""
        pred, target = _pair(pred, target)
        mask_b = None if mask is None else as_mask_batch(mask, pred)
        if info is not None and len(info) != len(pred):
            raise ValueError(f"info has {len(info)} entries for a batch of {len(pred)} images")
        columns: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name not in self.metrics:
                columns[name] = torch.full((len(pred),), math.nan, dtype=torch.float64)
                continue
            metric = self.metrics[name]
            result = metric.compute(pred, target, mask_b if metric.uses_mask else None)
            columns[name] = result.values
            for key, n in result.faces_not_found.items():
                self.faces_not_found[name][key] += n
        new = []
        for i in range(len(pred)):
            row = dict(info[i]) if info is not None else {}
            row.update({name: float(columns[name][i]) for name in self.names})
            new.append(row)
        self.rows.extend(new)
        return new

    def summary(self, rows: Sequence[dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
        """Per metric: mean over finite values, how many were finite, NaN (not measured) and infinite."""
        rows = self.rows if rows is None else rows
        out = {}
        for name in self.names:
            v = np.array([r[name] for r in rows], dtype=np.float64)
            finite = v[np.isfinite(v)]
            out[name] = {"mean": float(finite.mean()) if len(finite) else math.nan, "n": int(len(finite)),
                         "nan": int(np.isnan(v).sum()), "inf": int(np.isinf(v).sum())}
        return out

    def report(self) -> str:
        """Plain-text report: settings, unavailable metrics with the reason, faces not found, means."""
        lines = ["metric settings:"]
        for name, s in self.settings().items():
            lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
        for name, counts in self.faces_not_found.items():
            lines.append(f"{name}: face not found in {counts['pred']} prediction(s) and {counts['target']} "
                         f"target(s); {counts['pairs']} pair(s) not scored (NaN)")
        for name, st in self.summary().items():
            mean = "unavailable" if name in self.unavailable else f"{st['mean']:.4f}"
            lines.append(f"{name}: mean {mean} over {st['n']} (NaN {st['nan']}, inf {st['inf']})")
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> Path:
        """One row per sample; NaN (unavailable or not measured) is written as an empty cell."""
        path = Path(path)
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v
                                 for k, v in row.items()})
        return path

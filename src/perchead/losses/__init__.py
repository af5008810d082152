"""Perceptual supervision: frozen DINOv2 / SAM 2.1 feature losses, ablation losses, CLIP embeddings.

All losses take ``(pred, target)`` image batches ``[B,3,H,W]`` in [0,1] and return a scalar (the batch mean of
per-sample values); ``loss(pred, target, return_parts=True)`` also returns named parts for logging. Pick one
by name with ``build_loss``. See docs/losses.md.
"""

from .base import ImageLoss, WeightedSum
from .clip import clip_image_embedding, clip_text_embedding
from .dino import DinoLoss, DinoLossConfig, SharpenLoss, sharpen_loss_config
from .foundation import (
    ClipModels,
    FoundationModelError,
    Sam2ImageEncoder,
    WeightsNotFoundError,
    WrongModelTypeError,
    load_clip,
    load_dinov2,
    load_sam2_vision,
)
from .perceptual import LOSS_NAMES, LossConfig, PerceptualLoss, build_loss
from .pixel import L1Loss, LPIPSLoss, MSELoss, SSIMLoss, ssim
from .sam import SamLoss, SamLossConfig

__all__ = [
    "LOSS_NAMES",
    "ClipModels",
    "DinoLoss",
    "DinoLossConfig",
    "FoundationModelError",
    "ImageLoss",
    "L1Loss",
    "MSELoss",
    "LPIPSLoss",
    "LossConfig",
    "PerceptualLoss",
    "SSIMLoss",
    "Sam2ImageEncoder",
    "SamLoss",
    "SamLossConfig",
    "SharpenLoss",
    "WeightedSum",
    "WeightsNotFoundError",
    "WrongModelTypeError",
    "build_loss",
    "clip_image_embedding",
    "clip_text_embedding",
    "load_clip",
    "load_dinov2",
    "load_sam2_vision",
    "sharpen_loss_config",
    "ssim",
]

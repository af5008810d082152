"""CLIP embeddings for editing: one image or one text prompt -> an L2-normalised vector in CLIP's joint space.

Both go through the same ``CLIPModel`` (``get_image_features`` / ``get_text_features``, i.e. pooled output
then the visual / text projection), so an image embedding and a text embedding are directly comparable
and interchangeable as the editing style token. A closed-vocabulary CLIP (the caption-trained stand-in,
perchead.textclip) refuses prompts with words it never learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from perchead.textclip.vocabulary import check_prompts, closed_vocabulary

from .base import center_crop, resize_short_side
from .foundation import ClipModels

# OpenAI CLIP's preprocessing constants (CLIPImageProcessor defaults): bicubic resize, centre crop.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> shorter side to ``size`` (bicubic) -> centre crop -> CLIP normalisation."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor [B,3,H,W] in [0,1], got {tuple(images.shape)} {images.dtype}"
        )
    x = center_crop(resize_short_side(images, size, "bicubic"), size)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_image_embedding(clip: ClipModels, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLIP image embeddings [B, projection_dim]; differentiable w.r.t. ``images``."""
    model = clip.model
    pixels = clip_preprocess(images, model.config.vision_config.image_size)
    features = model.get_image_features(pixel_values=pixels.to(model.dtype)).pooler_output
    return F.normalize(features.float(), dim=-1)


def clip_text_embedding(clip: ClipModels, texts: str | Sequence[str]) -> torch.Tensor:
    """L2-normalised CLIP text embeddings [len(texts), projection_dim] of one or more prompts."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty string or list of strings")
    model = clip.model
    vocabulary = closed_vocabulary(model.config)
    if vocabulary is not None:  # a caption-trained stand-in: words it never learned would embed arbitrarily
        # Only the folder's own name: the message reaches the app's page, which must show no server path.
        check_prompts(list(texts), vocabulary, repr(Path(str(clip.name)).name))
    tokens = clip.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    device = next(model.parameters()).device
    features = model.get_text_features(
        input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
    ).pooler_output
    return F.normalize(features.float(), dim=-1)

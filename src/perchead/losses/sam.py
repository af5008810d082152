"""SAM 2.1 feature loss (L_SAM): the image encoder's lowest-resolution embedding, compared per location.

The embedding is the one SAM 2's mask decoder reads: the FPN neck level at stride 16 ([B,256,64,64] for a
1024x1024 input), which for Hiera-S is the lateral projection of stage 3 plus the upsampled stage-4 projection
(the stride-32 level is dropped, "scalp"), plus the learned no-memory embedding that SAM 2 adds for an image
without video memory. This is ``Sam2Model.get_image_embeddings(...)[-1]`` in transformers and
``image_embed`` in the authors' ``sam-loss`` package (SAM2ImagePredictor with ``directly_add_no_mem_embed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import ImageLoss, Parts, bf16_autocast, cosine_distance, imagenet_normalize, resize, run_block
from .foundation import DEFAULT_SAM2, Sam2ImageEncoder, load_sam2_vision


@dataclass
class SamLossConfig:
    """Settings of the SAM 2.1 loss; the defaults are the paper's (docs/design.md section 2)."""

    model: str = DEFAULT_SAM2
    """hub id or local folder of a SAM 2 / 2.1 checkpoint"""
    resolution: int = 1024
    """square input size (bilinear resize, as SAM 2's own transforms); a multiple of 32"""
    add_no_memory_embedding: bool = True
    """add SAM 2's no-memory embedding to the compared map (as the mask decoder sees it)"""
    gradient_checkpointing: bool = False
    """recompute the frozen Hiera blocks in backward instead of storing their activations"""
    bf16_on_cuda: bool = True
    """run the frozen encoder under bf16 autocast on CUDA (never on CPU)"""

    @classmethod
    def for_render(cls, render_size: int, scale: float = 2.0, **overrides) -> SamLossConfig:
        """Lower feature resolution for small renders: ``scale * render_size``, rounded up to 32, <= 1024."""
        resolution = min(1024, 32 * math.ceil(scale * render_size / 32))
        return cls(resolution=resolution, **overrides)


def sam_preprocess(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[0,1] images -> bilinear resize to resolution x resolution -> ImageNet normalisation."""
    return imagenet_normalize(resize(images, (resolution, resolution), "bilinear"))


def sam_lowres_embedding(
    encoder: Sam2ImageEncoder, pixel_values: torch.Tensor, add_no_memory: bool, use_checkpoint: bool = False
) -> torch.Tensor:
    """The lowest-resolution FPN level the mask decoder reads, [B, fpn_hidden_size, H/16, W/16]."""
    vision = encoder.vision_encoder
    backbone = vision.backbone
    # Same steps as Sam2HieraDetModel.forward, block by block so each block can be checkpointed.
    hidden = backbone.patch_embed(pixel_values)
    hidden = hidden + backbone._get_pos_embed(hidden.shape[1:3])
    stage_outputs = []
    for i, block in enumerate(backbone.blocks):
        hidden = run_block(block, hidden, use_checkpoint)
        if i in backbone.stage_ends:
            stage_outputs.append(hidden)
    fpn, _ = vision.neck(tuple(stage_outputs))
    # The neck lists levels low -> high resolution; SAM keeps the last num_feature_levels, the first of which
    # is the lowest-resolution map the mask decoder reads.
    embedding = fpn[len(fpn) - vision.num_feature_levels]
    if add_no_memory:
        embedding = embedding + encoder.no_memory_embedding.to(embedding.dtype).view(1, -1, 1, 1)
    return embedding


class SamLoss(ImageLoss):
    """mean over locations of 1 - cos over channels of SAM 2.1's image embeddings, per sample."""

    frozen = ("encoder",)

    def __init__(self, config: SamLossConfig | None = None, encoder: Sam2ImageEncoder | None = None):
        super().__init__()
        self.config = config = config or SamLossConfig()
        self.encoder = encoder if encoder is not None else load_sam2_vision(config.model)
        self.encoder.eval().requires_grad_(False)
        backbone_cfg = self.encoder.config.backbone_config
        stride = backbone_cfg.patch_stride[0]
        multiple = math.lcm(
            stride * backbone_cfg.window_size_per_stage[0], stride * 2**backbone_cfg.num_query_pool_stages
        )
        if config.resolution <= 0 or config.resolution % multiple != 0:
            raise ValueError(
                f"SAM resolution must be a positive multiple of {multiple}, got {config.resolution}"
            )
        if config.add_no_memory_embedding and self.encoder.no_memory_embedding is None:
            raise ValueError(
                f"SAM checkpoint {self.encoder.name!r} holds only the vision encoder, without SAM 2's "
                "no-memory embedding; load a full sam2 / sam2_video checkpoint (e.g. "
                "facebook/sam2.1-hiera-small) or set add_no_memory_embedding=False"
            )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = sam_preprocess(images, cfg.resolution)
        with bf16_autocast(cfg.bf16_on_cuda, x.device):
            return sam_lowres_embedding(
                self.encoder, x, cfg.add_no_memory_embedding, cfg.gradient_checkpointing
            )

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        pred_features = self.features(pred)
        with torch.no_grad():
            target_features = self.features(target)
        return cosine_distance(pred_features, target_features, dim=1).flatten(1).mean(dim=1), {}

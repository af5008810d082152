"""Randomly initialised models of the real foundation-model classes, for tests and timing only.

Tests save these with ``save_pretrained`` and load them back through the public loaders, so the loading code
path is exercised without network access. The full-size configs let benchmarks time DINOv2 ViT-S/14 and
SAM 2.1 Hiera-S with random weights; nothing here is ever used as a loss's weights.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_dinov2_config(registers: int = 0):
    """12 blocks (so layer 11 exists), width 32, patch 14."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    if registers:
        return Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
    return Dinov2Config(**kwargs)


def dinov2_small_config():
    """facebook/dinov2-small's architecture (ViT-S/14, 12 blocks, width 384, 518 px position grid)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
    )


def _sam2_config(
    backbone: dict, fpn: int, channels: list[int], image_size: int, decoder_dim: int, decoder_heads: int
):
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    s = image_size // 4
    vision = Sam2VisionConfig(
        backbone_config=Sam2HieraDetConfig(image_size=[image_size, image_size], **backbone),
        backbone_channel_list=channels,
        backbone_feature_sizes=[[s, s], [s // 2, s // 2], [s // 4, s // 4]],
        fpn_hidden_size=fpn,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=fpn, image_size=image_size),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=fpn, mlp_dim=8 * fpn, num_attention_heads=decoder_heads, iou_head_hidden_dim=fpn
        ),
    )


def tiny_sam2_config(image_size: int = 128):
    """A 5-block Hiera with the real stage/window structure; its low-res level is [B,32,image_size/16,...]."""
    backbone = dict(
        hidden_size=8,
        num_attention_heads=1,
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        blocks_per_stage=[1, 1, 2, 1],
        global_attention_blocks=[3],
        window_size_per_stage=[8, 4, 4, 2],
    )
    return _sam2_config(backbone, 32, [64, 32, 16, 8], image_size, 32, 2)


def sam21_hiera_small_config():
    """facebook/sam2.1-hiera-small's image-encoder architecture (Hiera-S: stages 1-2-11-2, global 7/10/13)."""
    backbone = dict(
        hidden_size=96,
        num_attention_heads=1,
        embed_dim_per_stage=[96, 192, 384, 768],
        num_attention_heads_per_stage=[1, 2, 4, 8],
        blocks_per_stage=[1, 2, 11, 2],
        global_attention_blocks=[7, 10, 13],
        window_size_per_stage=[8, 4, 14, 7],
    )
    return _sam2_config(backbone, 256, [768, 384, 192, 96], 1024, 256, 8)


def tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer without merges: every character is a token (real CLIP class)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip_config(vocab_size: int):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)


def save_tiny_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write tiny random DINOv2, DINOv2-with-registers, SAM 2 and CLIP checkpoints; returns name -> folder."""
    from transformers import CLIPModel, Dinov2Model, Dinov2WithRegistersModel, Sam2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    paths = {}
    paths["dinov2"] = folder / "dinov2"
    Dinov2Model(tiny_dinov2_config()).save_pretrained(paths["dinov2"])
    paths["dinov2_reg"] = folder / "dinov2_reg"
    Dinov2WithRegistersModel(tiny_dinov2_config(registers=4)).save_pretrained(paths["dinov2_reg"])
    sam = Sam2Model(tiny_sam2_config())
    # zeros at init; a non-zero value makes tests see whether it is really added
    torch.nn.init.normal_(sam.no_memory_embedding, std=0.1)
    paths["sam2"] = folder / "sam2"
    sam.save_pretrained(paths["sam2"])
    paths["sam2_vision"] = folder / "sam2_vision"
    sam.vision_encoder.save_pretrained(paths["sam2_vision"])
    tokenizer = tiny_clip_tokenizer()
    paths["clip"] = folder / "clip"
    CLIPModel(tiny_clip_config(len(tokenizer))).save_pretrained(paths["clip"])
    tokenizer.save_pretrained(paths["clip"])
    return paths

"""Typed model configuration and the four presets.

All presets are the same code with different numbers (docs/design.md section 3). A config is stored as
``config.json`` next to the weights, so a checkpoint says which architecture it holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

PRESETS = ("paper", "base", "small", "tiny")

# Architectures of the published DINOv2 checkpoints. Used to check a preset's layer list without weights and
# to build a same-sized model on the "meta" device (parameter counts) or with random weights (benchmarks).
# The numbers are those of the checkpoints' config.json files on the Hugging Face hub.
DINOV2_ARCHS: dict[str, dict[str, Any]] = {
    "facebook/dinov2-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "facebook/dinov2-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "facebook/dinov2-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "facebook/dinov2-giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24,
                                  use_swiglu_ffn=True),
    "facebook/dinov2-with-registers-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                                 num_register_tokens=4),
    "facebook/dinov2-with-registers-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                num_register_tokens=4),
    "facebook/dinov2-with-registers-large": dict(hidden_size=1024, num_hidden_layers=24,
                                                 num_attention_heads=16, num_register_tokens=4),
    "facebook/dinov2-with-registers-giant": dict(hidden_size=1536, num_hidden_layers=40,
                                                 num_attention_heads=24, use_swiglu_ffn=True,
                                                 num_register_tokens=4),
}


@dataclass
class ModelConfig:
    """Every number of the PercHead network. Lengths are metres, image sizes pixels."""

    preset: str = "custom"
    # -- input ------------------------------------------------------------------------------------------
    image_size: int = 512
    """Side of the square input crop. Padded (with background) up to a multiple of ``patch_size``."""
    patch_size: int = 14
    fg_threshold: float = 0.5
    """A pixel is foreground when its mask value exceeds this; a patch is kept when it has one."""
    background: float = 1.0
    """Grey level the image is composited onto outside the mask (white, as the paper's renders)."""
    # -- frozen DINOv2 branch ---------------------------------------------------------------------------
    dino: str | None = "facebook/dinov2-with-registers-giant"
    """Hub id or local folder of a DINOv2 (with or without registers); None = trainable ViT branch only."""
    dino_layers: tuple[int, ...] = (9, 19, 29, 39)
    """0-based transformer blocks whose outputs (after DINOv2's final LayerNorm) are concatenated."""
    # -- trainable ViT branch ---------------------------------------------------------------------------
    vit_width: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    # -- fusion: F2D = MLP(concat per patch) ------------------------------------------------------------
    f2d_width: int = 1024
    stats_branch: bool = False
    """a training-free third branch (perchead.model.encoder.PatchStatsBranch): per patch, the colour statistics
    of its foreground pixels and Fourier features of its position, concatenated before the fusion MLP. Needs
    no weights, so it stands in for the frozen DINOv2 where none exist and gives the decoder the colours to
    copy from the first step (issue 27)"""
    stats_freqs: int = 4
    """Fourier bands of the patch-centre features of the stats branch"""
    global_token: bool = False
    """append one image-level token (the fusion MLP applied to the mean of the foreground patches' features)
    to the 2D tokens the template decoder attends to"""
    # -- template and 3D tokens -------------------------------------------------------------------------
    template: str = "builtin"
    """Where the template came from ("builtin", or "flame:<file name>"); the template itself lives in the
    checkpoint's weights, so a checkpoint is self-contained."""
    template_resolution: int = 256
    """The template is a RxR UV position map; R^2 Gaussians, (R/4)^2 tokens of 4x4 points."""
    fourier_freqs: int = 6
    # -- decoder ----------------------------------------------------------------------------------------
    decoder: Literal["template", "lifting"] = "template"
    """template: PercHead's template tokens cross-attending to the image (the paper); lifting: the 2D-lifting
    baseline (GAGAvatar/LAM style, perchead.model.lifting): self-attention over the image's patch tokens,
    Gaussians placed along the input camera's pixel rays"""
    width: int = 1024
    heads: int = 16
    layers: int = 10
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    """LayerNorm on each head's queries and keys in the decoder's cross-attention (ViT-22B style), so the
    attention logits are not tied to the size of the image tokens (issue 27)"""
    attn_init: Literal["small", "xavier"] = "small"
    """initial weights of the decoder's cross-attention projections (q, kv, out): "small" = ViT-style
    truncated normal (std 0.02) like every other layer; "xavier" = Xavier-uniform, so what a 3D token reads
    from the image starts at the size of the token itself instead of ~1e-3 of it (issue 27: with "small" the
    encoder's gradients start ~10^4 times smaller than the heads')"""
    # -- Gaussian heads ---------------------------------------------------------------------------------
    gaussian_latent: int = 64
    """Channels per Gaussian after PixelShuffle(4) (each token -> 16 latents)."""
    colour_read: bool = False
    """each Gaussian's colour starts from the input's own colours: its latent queries the 2D tokens in a small
    cross-attention whose values are the patches' mean foreground RGB (perchead.model.heads.ColourRead), and
    the colour head adds a correction in logit space. Untrained it paints the input's mean colour; training
    only has to learn *where* to look (issue 27). Off: the paper's linear colour head alone. Its attention is
    Gaussians x patches per head (tiny: 4,096 x <= 100; paper: 65,536 x <= 1,369, fine on a GPU's fused
    attention, ~1.4 GB per image where PyTorch's CPU attention materialises it)"""
    colour_read_heads: int = 4
    colour_read_dim: int = 16
    s_init: float = 0.1
    s_max: float = 0.05
    """Largest offset of a Gaussian from its template point per axis, as a fraction of the head size (the
    template's largest bounding-box side)."""
    scale_init: float = 0.5
    """Initial Gaussian standard deviation as a fraction of the template's mean point spacing."""
    scale_min: float = 1e-4
    scale_max: float = 0.05
    """Clamp range of Gaussian standard deviations (metres)."""
    opacity_init: float = 0.1
    lifting_depth: float = 0.5
    """lifting decoder only: largest depth offset of a Gaussian from the head centre along its pixel's ray, as
    a fraction of the head size (the 3D offset off the ray is bounded by s_max)"""
    # -- SHP-CNN ----------------------------------------------------------------------------------------
    shp_cnn: bool = True
    shp_channels: int = 32
    shp_blocks: int = 3

    def __post_init__(self) -> None:
        self.dino_layers = tuple(int(i) for i in self.dino_layers)
        problems = []
        if self.template_resolution % 4:
            problems.append(f"template_resolution {self.template_resolution} is not a multiple of 4")
        if self.width % self.heads:
            problems.append(f"decoder width {self.width} is not divisible by heads {self.heads}")
        if self.vit_width % self.vit_heads:
            problems.append(f"vit_width {self.vit_width} is not divisible by vit_heads {self.vit_heads}")
        if self.dino is not None and not self.dino_layers:
            problems.append("a DINOv2 branch needs at least one layer in dino_layers")
        if not 0.0 < self.s_max < 1.0 or self.s_init <= 0:
            problems.append(f"s_max {self.s_max} must be in (0, 1) and s_init {self.s_init} > 0")
        if self.decoder not in ("template", "lifting"):
            problems.append(f"decoder {self.decoder!r} is not 'template' or 'lifting'")
        if self.lifting_depth <= 0:
            problems.append(f"lifting_depth {self.lifting_depth} must be > 0")
        if not 0.0 < self.opacity_init < 1.0:
            problems.append(f"opacity_init {self.opacity_init} must be in (0, 1)")
        if self.attn_init not in ("small", "xavier"):
            problems.append(f"attn_init {self.attn_init!r} is not 'small' or 'xavier'")
        if self.colour_read and self.decoder != "template":
            problems.append("colour_read is a template-decoder option (the lifting decoder copies colours "
                            "from its own pixels)")
        if self.colour_read_heads < 1 or self.colour_read_dim < 1:
            problems.append("colour_read_heads and colour_read_dim must be >= 1")
        if self.stats_freqs < 0:
            problems.append(f"stats_freqs {self.stats_freqs} must be >= 0")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    # -- derived numbers --------------------------------------------------------------------------------
    @property
    def patch_grid(self) -> int:
        """Patches per side after padding the input up to a multiple of the patch size."""
        return -(-self.image_size // self.patch_size)

    @property
    def patch_padding(self) -> tuple[int, int]:
        """Background pixels added before and after the input (each axis) to reach whole patches."""
        pad = self.patch_grid * self.patch_size - self.image_size
        return pad // 2, pad - pad // 2

    @property
    def num_gaussians(self) -> int:
        """Gaussians per head of the template decoder (the lifting decoder: lifting_subdivision^2 per
        foreground patch, see there)."""
        return self.template_resolution**2

    @property
    def lifting_subdivision(self) -> int:
        """Lifting decoder: Gaussians per patch side (k x k per foreground patch), chosen so that a head covering
        half of the patch grid (a 1.65x head crop: 45-55% of the patches of the synthetic test inputs) gets
        about the template's Gaussian count: k = round(sqrt(2 x Gaussians / patches)); tiny 9, small and
        paper 10."""
        return max(1, round(math.sqrt(2 * self.num_gaussians / self.patch_grid**2)))

    @property
    def num_tokens(self) -> int:
        return (self.template_resolution // 4) ** 2

    # -- (de)serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dino_layers"] = list(self.dino_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config has unknown field(s) {unknown}: written by a newer perchead?")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _paper() -> ModelConfig:
    # docs/design.md sections 2-3: ViT-g/14-reg layers 9,19,29,39; 512 px; 65,536 Gaussians; decoder 1024 wide,
    # 16 heads, 10 layers. The trainable ViT's size is not published: ViT-B is our choice.
    return ModelConfig(preset="paper")


def _base() -> ModelConfig:
    # Same input and Gaussian count as the paper with a DINOv2 ViT-B/14 and a half-width decoder: the
    # configuration to train on a single consumer GPU.
    return ModelConfig(preset="base", dino="facebook/dinov2-base", dino_layers=(2, 5, 8, 11),
                       vit_width=384, vit_depth=6, vit_heads=6, f2d_width=512,
                       width=512, heads=8, layers=8, gaussian_latent=32)


def _small() -> ModelConfig:
    # Laptop-CPU training: 256 px, 128x128 template (16,384 Gaussians, 1,024 tokens). Keeps a frozen
    # DINOv2 ViT-S/14 branch -- the same weights the DINO loss needs anyway, so training it costs no extra
    # download; pass dino=None for a ViT-only model.
    return ModelConfig(preset="small", image_size=256, dino="facebook/dinov2-small",
                       dino_layers=(2, 5, 8, 11),
                       vit_width=256, vit_depth=6, vit_heads=4, f2d_width=256, template_resolution=128,
                       width=256, heads=8, layers=6, gaussian_latent=32, shp_channels=16, shp_blocks=2)


def _tiny() -> ModelConfig:
    # CPU demo / smoke tests: 128 px, 64x64 template (4,096 Gaussians, 256 tokens) and NO DINOv2 branch, so it
    # can be built and trained where no DINOv2 weights exist. A few ms per image.
    return ModelConfig(preset="tiny", image_size=128, dino=None, dino_layers=(),
                       vit_width=192, vit_depth=4, vit_heads=3, f2d_width=128, template_resolution=64,
                       width=128, heads=4, layers=4, gaussian_latent=16, shp_channels=16, shp_blocks=2)


_PRESET_BUILDERS = {"paper": _paper, "base": _base, "small": _small, "tiny": _tiny}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset, with any field overridden (e.g. ``preset("small", dino=None, dino_layers=())``)."""
    if name not in _PRESET_BUILDERS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = _PRESET_BUILDERS[name]()
    return cfg.replace(**overrides) if overrides else cfg


__all__ = ["DINOV2_ARCHS", "PRESETS", "ModelConfig", "preset"]

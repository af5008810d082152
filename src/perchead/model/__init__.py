"""The PercHead network: head template, dual-branch encoder, cross-attention decoder, Gaussian heads,
SHP-CNN, presets and safetensors checkpoints. See docs/model.md."""

from .config import DINOV2_ARCHS, PRESETS, ModelConfig, preset
from .decoder import Decoder
from .encoder import ImageEncoder, ImageTokens, load_dinov2
from .heads import GaussianHeads
from .perchead_model import PercHead
from .shp_cnn import ShpCnn
from .template import HeadTemplate

__all__ = ["DINOV2_ARCHS", "PRESETS", "Decoder", "GaussianHeads", "HeadTemplate", "ImageEncoder",
           "ImageTokens", "ModelConfig", "PercHead", "ShpCnn", "load_dinov2", "preset"]

"""Disentangled editing: a 19-class segmentation map sets the geometry, one CLIP embedding (reference image or
text prompt) sets the style, and the reconstruction model's decoder turns them into Gaussians.
See docs/editing.md."""

from .encoder import EditConfig, SegStyleEncoder
from .network import EditNetwork, load_edit_network
from .segmentation import (
    NUM_CLASSES,
    PALETTE,
    Segmentation,
    colorize,
    grow_class,
    load_face_parser,
    load_segmentation,
    save_segmentation,
    segment_mediapipe,
    segment_photo,
    validate_segmentation,
)

__all__ = ["NUM_CLASSES", "PALETTE", "EditConfig", "EditNetwork", "SegStyleEncoder", "Segmentation", "colorize",
           "grow_class", "load_edit_network", "load_face_parser", "load_segmentation", "save_segmentation",
           "segment_mediapipe", "segment_photo", "validate_segmentation"]

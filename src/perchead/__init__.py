"""perchead: single-image 3D head reconstruction and editing with 3D Gaussians (PercHead, CVPR 2026)."""

__version__ = "0.1.0"

"""The steps of one edit shared by ``perchead edit`` and the web app (``perchead.app``): the map as the
"input" of views.png, a style from an image, the Gaussians, and the files an edit adds to reconstruct's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from perchead.data.format import SEG
from perchead.geometry import Gaussians

from .network import EditNetwork
from .segmentation import colorize, resize_segmentation, save_segmentation

EDIT_FILES = ("segmentation.png", "segmentation_color.png", "edit.json")


def map_preprocessed(labels: np.ndarray, size: int, source: str):
    """A :class:`~perchead.preprocess.Preprocessed` stand-in for an edit without a photo: the coloured map
    (resized to ``size``) is the "input crop" of views.png, its foreground the mask, the standard input camera
    the camera."""
    from perchead.geometry import input_camera
    from perchead.preprocess import Preprocessed

    labels = resize_segmentation(labels, size)
    colour = colorize(labels)
    mask = (labels != SEG["background"]).astype(np.float32)
    matted = np.where(mask[..., None] > 0, colour, 255).astype(np.uint8)
    return Preprocessed(image=matted, crop=colour, mask=mask, camera=input_camera(size),
                        crop_box=(0.0, 0.0, size, size), face_box=None, head_box=None,
                        detector="none (segmentation map)", num_faces=0, source=source, original_size=(size, size))


def image_style(net: EditNetwork, rgb: np.ndarray, mask: np.ndarray | None, device: torch.device) -> torch.Tensor:
    """CLIP style of an RGB uint8 picture [H, W, 3]; with ``mask`` [H, W] it is matted onto white first, as the
    edit stage's training inputs are."""
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255.0
    m = None if mask is None else torch.from_numpy(np.asarray(mask, np.float32))[None, None].to(device)
    return net.style_from_image(image.to(device), m)


def generate_head(net: EditNetwork, labels: np.ndarray, style: torch.Tensor, device: torch.device,
                  render_device: torch.device) -> Gaussians:
    """Map [S, S] class ids (at the network's input size) + style -> unbatched float32 Gaussians on
    ``render_device``; a broken checkpoint fails here, not as a blank video."""
    with torch.inference_mode():
        g = net.generate(torch.from_numpy(labels.astype(np.int64))[None].to(device), style)[0]
    g = g.to(render_device, torch.float32)
    g.check_finite()
    return g


def write_edit_files(folder: Path, labels: np.ndarray, info: dict) -> None:
    """segmentation.png (class ids), segmentation_color.png (palette colours, to repaint and pass back with
    --seg) and edit.json, into ``folder`` (a staging folder: they appear with reconstruct's files or not at all)."""
    from PIL import Image

    save_segmentation(folder / "segmentation.png", labels)
    Image.fromarray(colorize(labels)).save(folder / "segmentation_color.png")
    (folder / "edit.json").write_text(json.dumps(info, indent=1) + "\n")


__all__ = ["EDIT_FILES", "generate_head", "image_style", "map_preprocessed", "write_edit_files"]

"""The steps of one edit shared by ``perchead edit`` and the web app (``perchead.app``): the map as the
"input" of views.png, a style from an image, the Gaussians, and the files an edit adds to reconstruct's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from perchead.data.format import SEG
from perchead.geometry import Gaussians

from .fidelity import gaussian_labels, map_fidelity, render_labels
from .fit import MapFitConfig, fit_to_map
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


def map_camera(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(viewmat, K at ``size`` px) of a painted map: the standard frontal input camera, the one the training
    maps were seen from and ``map_preprocessed`` gives."""
    from perchead.inference.pose import Pose, camera_K

    return Pose(0.0, 0.0).viewmat, camera_K(size)


def follow_map(net: EditNetwork, gaussians: Gaussians, labels: np.ndarray, config: MapFitConfig,
               backend: str = "auto", progress=None) -> tuple[Gaussians, dict]:
    """The edit's head fitted to its map (:func:`perchead.edit.fit.fit_to_map`, ``config.steps`` 0: as the
    network gave it) and how closely it follows the map from the map's camera (silhouette and per-group IoU,
    :func:`perchead.edit.fidelity.map_fidelity`): the ``map_fit`` and ``map_fidelity`` of edit.json."""
    seg = torch.from_numpy(labels.astype(np.int64)).to(gaussians.means.device)
    vm, K = (t.to(gaussians.means) for t in map_camera(seg.shape[-1]))
    point_labels = gaussian_labels(gaussians, seg, vm, K, backend)
    anchors, s_max = net.template.points()[0].to(gaussians.means), float(net.heads.s_max_m)
    result = fit_to_map(gaussians, point_labels, seg, vm, K, config, anchors, s_max, backend, progress)
    with torch.no_grad():
        rendered, alpha = render_labels(result.gaussians, result.labels, vm, K, seg.shape[-1], backend)
        fidelity = map_fidelity(rendered, alpha, seg)
    fidelity["measured"] = "from the map's camera; labels from the map on the network's Gaussians"
    return result.gaussians, {"map_fit": result.metadata(config), "map_fidelity": fidelity}


def fidelity_line(info: dict) -> str:
    """One line for people: how closely the head follows the painted map."""
    f = info["map_fidelity"]
    hair = f["iou"].get("hair")
    fitted = "fitted to the map" if info["map_fit"]["ran"] else "the network alone"
    sil = f["silhouette_iou"]
    text = f"silhouette IoU {sil:.2f}" if sil is not None else "silhouette IoU n/a"
    if hair is not None:
        text += f", hair IoU {hair:.2f}"
    return f"{text} from the map's camera ({fitted})"


def write_edit_files(folder: Path, labels: np.ndarray, info: dict) -> None:
    """segmentation.png (class ids), segmentation_color.png (palette colours, to repaint and pass back with
    --seg) and edit.json, into ``folder`` (a staging folder: they appear with reconstruct's files or not at all)."""
    from PIL import Image

    save_segmentation(folder / "segmentation.png", labels)
    Image.fromarray(colorize(labels)).save(folder / "segmentation_color.png")
    (folder / "edit.json").write_text(json.dumps(info, indent=1) + "\n")


__all__ = ["EDIT_FILES", "fidelity_line", "follow_map", "generate_head", "image_style", "map_camera",
           "map_preprocessed", "write_edit_files"]

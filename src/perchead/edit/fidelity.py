"""How closely an edited head follows its segmentation map: class labels on the Gaussians, rendered.

The network predicts Gaussians, not classes, so labels are given to the Gaussians from a map seen from its
camera (:func:`gaussian_labels`: each Gaussian's compositing-weighted mix of the classes of the pixels it
draws). :func:`render_labels` composites those labels like colours (:func:`perchead.render.render_features`),
and :func:`map_fidelity` compares the rendered label map and alpha with a map: silhouette IoU (alpha > 0.5 vs
the map's foreground) and IoU per class group.

Labelling from one map and measuring against another is what makes a controlled edit a test: the Gaussians
of the head made from the *original* map take their labels from it, and the head made from the *edited* map
(the same template points, so the same Gaussians index by index) keeps them. If the network ignores a hair
region grown by 20 px, its hair-labelled Gaussians stay where they were and the rendered hair area does not
grow; labelling the edited head from the edited map itself would call any Gaussian hair that happens to lie in
the painted region.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from perchead.data.format import SEG, SEGMENT_CLASSES
from perchead.geometry import Gaussians
from perchead.render import render_features

from .segmentation import validate_segmentation

NUM_CLASSES = len(SEGMENT_CLASSES)
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "hair": ("hair",),
    # the face: skin and the small parts that sit on it (a 128 px map gives them a handful of pixels each)
    "skin": ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "nose", "mouth", "u_lip", "l_lip"),
    "ears": ("l_ear", "r_ear", "ear_r"),
    "neck": ("neck", "neck_l"),
    "cloth": ("cloth",),
}
"""The groups whose IoU is reported (issue 16: hair, skin, ears, neck, cloth)."""


def _group_ids(names: tuple[str, ...]) -> list[int]:
    return [SEG[n] for n in names]


def one_hot(seg: Tensor) -> Tensor:
    """[H, W] class ids -> [H, W, C] float one-hot."""
    return torch.nn.functional.one_hot(seg.long(), NUM_CLASSES).float()


def resize_map(seg: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize of [H, W] class ids (labels are not interpolated)."""
    if seg.shape[-1] == size and seg.shape[-2] == size:
        return seg.long()
    return torch.nn.functional.interpolate(seg[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()


def _project_pixels(means: Tensor, viewmat: Tensor, K: Tensor, size: int) -> Tensor:
    """[N, 2] integer pixel (x, y) of each centre, clamped into the image."""
    cam = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2].clamp_min(1e-6)
    uv = torch.stack([K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]], -1)
    return uv.floor().long().clamp(0, size - 1)


def _label_weights(g: Gaussians, seg: Tensor, viewmat: Tensor, K: Tensor, backend: str) -> Tensor:
    """[N, C] compositing weight of each Gaussian on the pixels of each class of ``seg`` (0 where unseen)."""
    size = seg.shape[-1]
    feats = torch.zeros(len(g), NUM_CLASSES, device=g.means.device, requires_grad=True)
    out, _ = render_features(g, feats, viewmat[None].to(g.means), K[None].to(g.means), size, size, backend=backend)
    (out[0] * one_hot(seg).to(out)).sum().backward()
    return feats.grad.clamp_min(0)


def gaussian_labels(gaussians: Gaussians, segmentation: Tensor, viewmat: Tensor, K: Tensor,
                    backend: str = "auto", more_views: Sequence[tuple[Tensor, Tensor, Tensor]] = ()) -> Tensor:
    """[N, C] class probabilities of each Gaussian from ``segmentation`` [S, S] seen by (viewmat, K at S px).

    A Gaussian the camera sees takes the compositing-weighted mix of the classes of the pixels it draws (the
    weights w_i(p) = alpha_i T_i come from the gradient of one feature render, as
    :func:`perchead.inference.fit.photo_colours` does for colours); one it does not see (behind the face)
    takes the class of the pixel its centre projects to, so the back of the head is hair where the map's
    head is hair. ``more_views``: further (map, viewmat, K) of the same head (the synthetic data's exact maps
    of every view); their weights add up with the first map's, so a Gaussian seen from any of them takes the
    classes it is drawn with there (long hair behind the neck is hair, not the neck the front map puts under
    its centre)."""
    seg = validate_segmentation(segmentation).to(gaussians.means.device)
    size = seg.shape[-1]
    # callers run the network under inference_mode (the app): the weights need autograd and ordinary copies
    with torch.inference_mode(False), torch.enable_grad():
        g = Gaussians(*(t.detach().clone() for t in gaussians.tensors().values()))
        weights = _label_weights(g, seg, viewmat, K, backend)
        for m, vm, k in more_views:
            weights = weights + _label_weights(g, validate_segmentation(m).to(g.means.device), vm, k, backend)
    total = weights.sum(-1, keepdim=True)
    xy = _project_pixels(g.means, viewmat.to(g.means), K.to(g.means), size)
    fallback = one_hot(seg[xy[:, 1], xy[:, 0]]).to(weights)
    seen = total > 1e-3  # a thousandth of a pixel: numerically nothing
    return torch.where(seen, weights / total.clamp_min(1e-12), fallback)


def render_labels(gaussians: Gaussians, labels: Tensor, viewmat: Tensor, K: Tensor, size: int,
                  backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Rendered class ids [S, S] (background where alpha <= 0.5) and alpha [S, S] from (viewmat, K)."""
    feats, alpha = render_features(gaussians, labels.to(gaussians.means), viewmat[None].to(gaussians.means),
                                   K[None].to(gaussians.means), size, size, backend=backend)
    ids = feats[0].argmax(-1)
    a = alpha[0, ..., 0]
    return torch.where(a > 0.5, ids, torch.zeros_like(ids)), a


def _iou(a: Tensor, b: Tensor) -> float | None:
    union = int((a | b).sum())
    return None if union == 0 else int((a & b).sum()) / union


def class_area(seg: Tensor, group: str) -> int:
    """Pixels of a class group in a map."""
    return int(torch.isin(seg, torch.tensor(_group_ids(CLASS_GROUPS[group]), device=seg.device)).sum())


def map_fidelity(rendered: Tensor, alpha: Tensor, segmentation: Tensor) -> dict[str, Any]:
    """Silhouette IoU (alpha > 0.5 vs the map's foreground), IoU and areas (pixels) per class group of the
    rendered label map against ``segmentation`` (same size). IoU is None for a group absent from both."""
    seg = resize_map(segmentation.to(rendered.device), rendered.shape[-1])
    out: dict[str, Any] = {"silhouette_iou": _iou(alpha > 0.5, seg != SEG["background"]), "iou": {},
                           "area_rendered": {}, "area_map": {}}
    for group, names in CLASS_GROUPS.items():
        ids = torch.tensor(_group_ids(names), device=seg.device)
        r, m = torch.isin(rendered, ids), torch.isin(seg, ids)
        out["iou"][group] = _iou(r, m)
        out["area_rendered"][group], out["area_map"][group] = int(r.sum()), int(m.sum())
    return out


# -- controlled map edits ------------------------------------------------------------------------------------
def replace_class(seg: np.ndarray, names: tuple[str, ...], by: str) -> np.ndarray:
    """A map edit: every pixel of the ``names`` classes becomes ``by`` (e.g. ears hidden under hair)."""
    ids = validate_segmentation(seg).numpy().astype(np.uint8)
    for n in (*names, by):
        if n not in SEG:
            raise ValueError(f"unknown class {n!r}: one of {', '.join(SEGMENT_CLASSES)}")
    out = ids.copy()
    out[np.isin(ids, [SEG[n] for n in names])] = SEG[by]
    return out


def controlled_edits(seg: np.ndarray, grow_px: int = 20, shrink_px: int = 6) -> dict[str, tuple[np.ndarray, str]]:
    """The edits ``perchead eval-edit`` measures: name -> (edited map, the class group it edits).

    ``hair_grow``: hair grown ``grow_px`` px into the background; ``hair_shrink``: the background grown
    ``shrink_px`` px into the hair (its outline pulled in); ``hair_removed``: hair painted as background;
    ``ears_hidden``: ears painted as hair."""
    from .segmentation import grow_class

    return {
        f"hair_grow_{grow_px}px": (grow_class(seg, "hair", grow_px), "hair"),
        f"hair_shrink_{shrink_px}px": (grow_class(seg, "background", shrink_px, into=("hair",)), "hair"),
        "hair_removed": (replace_class(seg, ("hair",), "background"), "hair"),
        "ears_hidden": (replace_class(seg, CLASS_GROUPS["ears"], "hair"), "ears"),
    }


__all__ = ["CLASS_GROUPS", "NUM_CLASSES", "class_area", "controlled_edits", "gaussian_labels", "map_fidelity",
           "one_hot", "render_labels", "replace_class", "resize_map"]

"""Segmentation maps as pictures to paint on, and painted pictures back to class ids.

The Edit tab shows a map in the class colours of :data:`perchead.edit.PALETTE` and lets people paint on it with
a brush whose colours are exactly those. A browser brush is anti-aliased and the editor blends strokes into
the picture, so colours at stroke edges are mixtures; every painted pixel is therefore mapped back to the
*nearest* palette colour, and strokes are read from their own layers where possible (a stroke layer holds the
brush colour itself, with the anti-aliasing only in its alpha), so an edge between two classes never turns
into a third class that happens to lie between them in RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perchead.data.format import SEGMENT_CLASSES
from perchead.edit import NUM_CLASSES, PALETTE

# A picture whose pixels lie further than this (RGB distance) from every class colour was not painted with
# the palette; more than OFF_PALETTE_FRACTION of such pixels means it is not a class map at all (a photo).
OFF_PALETTE_DISTANCE = 48.0
OFF_PALETTE_FRACTION = 0.02


class MapError(ValueError):
    """A painted or uploaded map that cannot be turned into class ids; the message says what to do."""


def palette_hex() -> list[str]:
    """The class colours as "#rrggbb", in class-id order (the brush's colours)."""
    return ["#{:02x}{:02x}{:02x}".format(*(int(v) for v in c)) for c in PALETTE]


def nearest_class(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [..., 3] colours -> (uint8 class ids of the nearest palette colour, float32 distance to it)."""
    rgb = np.asarray(rgb)[..., :3]
    codes = rgb.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1])
    # A painted map has few distinct colours (the palette plus anti-aliased edges): compare those only.
    colours, inverse = np.unique(codes, return_inverse=True)
    unique_rgb = np.stack([colours // 65536, colours // 256 % 256, colours % 256], axis=1)
    d2 = ((unique_rgb[:, None, :] - PALETTE.astype(np.int64)[None, :, :]) ** 2).sum(-1)
    ids = d2.argmin(1)
    dist = np.sqrt(d2[np.arange(len(ids)), ids]).astype(np.float32)
    shape = rgb.shape[:-1]
    return ids[inverse].astype(np.uint8).reshape(shape), dist[inverse].reshape(shape)


def _as_rgba(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise MapError(f"the {what} is {image.dtype}, expected 8-bit colours")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise MapError(f"the {what} has shape {image.shape}, expected an RGB(A) picture")
    if image.shape[2] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return image


def labels_from_picture(picture: np.ndarray, strokes: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A map picture in class colours (transparent = background) plus stroke layers painted on it -> uint8
    [H, W] class ids. A stroke pixel counts where it is at least half opaque.

    Raises :class:`MapError` when the picture is not square, has no pixels, or is mostly off the palette
    (e.g. a photo was put into the editor instead of a map).
    """
    base = _as_rgba(picture, "map")
    h, w = base.shape[:2]
    if h == 0 or w == 0:
        raise MapError("the map is empty (0 pixels)")
    if h != w:
        raise MapError(f"the map is {w}x{h} pixels but maps must be square (the head crop): crop it to a square, "
                       "or make a new one with 'Map from a photo'")
    ids, dist = nearest_class(base[..., :3])
    opaque = base[..., 3] >= 128
    off = (dist > OFF_PALETTE_DISTANCE) & opaque
    if off.mean() > OFF_PALETTE_FRACTION:
        raise MapError(f"{100 * off.mean():.0f}% of the map's pixels are not class colours, so it is not a "
                       "segmentation map (is it a photo?): use 'Map from a photo', or upload a map PNG (8-bit class "
                       "ids 0..18 or the class colours)")
    ids[~opaque] = 0
    for i, layer in enumerate(strokes):
        layer = _as_rgba(layer, f"stroke layer {i + 1}")
        if layer.shape[:2] != (h, w):
            raise MapError(f"stroke layer {i + 1} is {layer.shape[1]}x{layer.shape[0]} but the map is {w}x{h}")
        painted = layer[..., 3] >= 128
        if painted.any():
            ids[painted] = nearest_class(layer[painted][:, :3])[0]
    return ids


def labels_from_editor(value: dict | None) -> np.ndarray:
    """An image-editor value ({"background", "layers", "composite"}, numpy RGBA) -> class ids.

    The stroke layers are read over the background map; without a background (nothing loaded) the composite
    is read instead.
    """
    if not value:
        raise MapError("there is no map to render: make one with 'Map from a photo' or upload a map PNG first")
    background = value.get("background")
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    if background is None:
        composite = value.get("composite")
        if composite is None:
            raise MapError("there is no map to render: make one with 'Map from a photo' or upload a map PNG first")
        return labels_from_picture(composite)
    return labels_from_picture(background, layers)


def legend_html() -> str:
    """A small HTML table naming every class next to its brush colour."""
    cells = []
    for i, (name, colour) in enumerate(zip(SEGMENT_CLASSES, palette_hex(), strict=True)):
        cells.append(f'<span class="perchead-class"><span class="perchead-swatch" style="background:{colour}">'
                     f'</span>{i} {name}</span>')
    assert len(cells) == NUM_CLASSES
    return '<div class="perchead-legend">' + "".join(cells) + "</div>"


LEGEND_CSS = """
.perchead-legend {display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.85em}
.perchead-class {display: inline-flex; align-items: center; gap: 4px}
.perchead-swatch {display: inline-block; width: 14px; height: 14px; border: 1px solid #888}
"""

__all__ = ["LEGEND_CSS", "MapError", "OFF_PALETTE_DISTANCE", "labels_from_editor", "labels_from_picture",
           "legend_html", "nearest_class", "palette_hex"]

"""19-class face-parsing maps (CelebAMask-HQ / FaRL order, ``perchead.data.format.SEGMENT_CLASSES``).

* :func:`validate_segmentation`: one checkpoint for every map that reaches the network (integer class ids,
  the right size, labels 0..18), with errors that say what is wrong and what to do.
* :data:`PALETTE`, :func:`colorize`, :func:`load_segmentation` / :func:`save_segmentation`: maps on disk
  are 8-bit single-channel PNGs of class ids; a colour PNG painted with :data:`PALETTE` is read back too.
* Segmenting a photo: :func:`load_face_parser` (a real face parser, any ``transformers`` semantic
  segmentation model by hub id or folder, e.g. ``jonathandinu/face-parsing``, its labels mapped to ours by
  name) or :func:`segment_mediapipe` (offline fallback from what ships in the mediapipe wheel: Face Mesh
  polygons + Selfie Segmentation). Both return a :class:`Segmentation` that says which one produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from perchead.data.format import SEG, SEGMENT_CLASSES
from perchead.preprocess.detect import fill_polygon, landmark_ring

NUM_CLASSES = len(SEGMENT_CLASSES)  # 19

# One colour per class in SEGMENT_CLASSES order: CelebAMask-HQ's usual visualisation colours, except six that
# were too close to another class's to tell apart with a brush (CIELAB distance 15-25: l_eye/l_lip, nose/hat,
# eye_g/neck_l, skin/ear_r, r_brow/mouth, l_brow/nose). Those six (ear_r, nose, mouth, l_lip, neck_l, hat) were
# replaced, one at a time, by the colour of a 6-level RGB grid furthest from all others; every pair is now at
# least 34 apart (tests/test_app_handlers.py checks it).
PALETTE = np.array([
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 153, 255), (0, 255, 0), (0, 255, 153), (0, 0, 153), (51, 153, 255),
    (255, 51, 153), (102, 153, 153), (0, 51, 0), (255, 153, 51), (102, 51, 102),
], dtype=np.uint8)
assert len(PALETTE) == NUM_CLASSES


@dataclass
class Segmentation:
    """A class-id map and where it came from."""

    labels: np.ndarray
    """uint8 [H, W] class ids in SEGMENT_CLASSES order"""
    source: str
    """which segmenter produced it: "face-parser:<name>", "mediapipe-facemesh+selfie", or "file:<path>\""""


# -- validation ------------------------------------------------------------------------------------------------
def validate_segmentation(seg: Tensor | np.ndarray, size: int | None = None) -> Tensor:
    """Check a map [H, W] or a batch [B, H, W] of class ids and return it as an int64 tensor.

    Refuses floating-point / boolean maps (a one-hot or a probability map is not a class-id map), maps
    whose side differs from ``size``, and labels outside 0..18.
    """
    t = torch.from_numpy(np.array(seg)) if isinstance(seg, np.ndarray) else seg
    if not isinstance(t, Tensor):
        raise ValueError(f"segmentation must be a tensor or numpy array of class ids, got {type(seg).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"segmentation has dtype {t.dtype}: it must hold integer class ids 0..{NUM_CLASSES - 1} "
                         "(uint8 / int64), not colours, probabilities or a one-hot map; load PNG maps with "
                         "perchead.edit.segmentation.load_segmentation")
    if t.ndim not in (2, 3):
        raise ValueError(f"segmentation must be [H, W] or [B, H, W] class ids, got shape {tuple(t.shape)}")
    h, w = t.shape[-2:]
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"segmentation map is {w}x{h} but this model takes {size}x{size} maps; resize it "
                         "with nearest-neighbour sampling (perchead.edit.segmentation.resize_segmentation)")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= NUM_CLASSES:
            bad = sorted({int(v) for v in torch.unique(t) if not 0 <= int(v) < NUM_CLASSES})
            raise ValueError(f"segmentation has unknown label(s) {bad[:10]}: labels must be 0..{NUM_CLASSES - 1} "
                             f"({', '.join(f'{i}={n}' for i, n in enumerate(SEGMENT_CLASSES))})")
    return t.long()


def resize_segmentation(seg: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a square [H, W] class-id map (never mixes labels)."""
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.shape[0] != seg.shape[1]:
        raise ValueError(f"segmentation map must be square, got {seg.shape[1]}x{seg.shape[0]}: crop it to the "
                         "square head crop first")
    if seg.shape[0] == size:
        return seg.astype(np.uint8)
    return np.asarray(Image.fromarray(seg.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST))


def grow_class(seg: np.ndarray, name: str, pixels: int, into: tuple[str, ...] = ("background",)) -> np.ndarray:
    """A map edit: class ``name`` grown by ``pixels`` steps of 4-neighbour dilation, only over pixels of the
    ``into`` classes (by default the background, so the face is untouched), e.g. fuller, longer hair."""
    ids = validate_segmentation(seg).numpy().astype(np.uint8)
    if ids.ndim != 2:
        raise ValueError(f"grow_class edits one [H, W] map, got shape {ids.shape}")
    for n in (name, *into):
        if n not in SEG:
            raise ValueError(f"unknown class {n!r}: one of {', '.join(SEGMENT_CLASSES)}")
    if pixels < 0:
        raise ValueError(f"pixels must be >= 0, got {pixels}")
    grown, target = ids.copy(), np.isin(ids, [SEG[n] for n in into])
    if pixels == 0:
        return grown  # (scipy's iterations=0 means "until nothing changes")
    # 4-connected growth, one pixel per iteration, only into the target classes
    reached = ndimage.binary_dilation(ids == SEG[name], iterations=pixels, mask=target)
    grown[reached & target] = SEG[name]
    return grown


# -- pictures and files ----------------------------------------------------------------------------------------
def colorize(seg: np.ndarray | Tensor) -> np.ndarray:
    """[H, W] class ids -> uint8 [H, W, 3] in :data:`PALETTE` colours."""
    ids = validate_segmentation(seg).numpy()
    return PALETTE[ids]


def save_segmentation(path: str | Path, seg: np.ndarray | Tensor) -> Path:
    """Write an 8-bit single-channel PNG of class ids (what :func:`load_segmentation` reads)."""
    ids = validate_segmentation(seg)
    if ids.ndim != 2:
        raise ValueError(f"save_segmentation writes one [H, W] map, got shape {tuple(ids.shape)}")
    path = Path(path)
    Image.fromarray(ids.numpy().astype(np.uint8), "L").save(path)
    return path


def load_segmentation(path: str | Path) -> np.ndarray:
    """A map from a PNG: 8-bit grey / palette PNG of class ids, or an RGB(A) picture painted with exactly the
    :data:`PALETTE` colours (e.g. ``segmentation_color.png`` repainted by hand). -> uint8 [H, W]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation map {path} not found")
    try:
        img = Image.open(path)
        img.load()
    except OSError as exc:
        raise ValueError(f"{path} is not a readable image: {exc}") from exc
    if img.mode in ("L", "P", "I", "I;16"):
        arr = np.asarray(img)
        return validate_segmentation(arr.astype(np.int64)).numpy().astype(np.uint8)
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"))
        codes = rgb.astype(np.int64) @ np.array([65536, 256, 1])
        table = PALETTE.astype(np.int64) @ np.array([65536, 256, 1])
        ids = np.full(codes.shape, -1, dtype=np.int64)
        for i, code in enumerate(table):
            ids[codes == code] = i
        if (ids < 0).any():
            n = int((ids < 0).sum())
            raise ValueError(f"{path} is a colour image with {n} pixel(s) in colours outside the class palette "
                             "(perchead.edit.segmentation.PALETTE): save maps as 8-bit PNGs of class ids 0..18, "
                             "or paint only with the palette colours (no antialiasing)")
        return ids.astype(np.uint8)
    raise ValueError(f"{path} has image mode {img.mode}: a segmentation map is an 8-bit PNG of class ids")


# -- a real face parser ----------------------------------------------------------------------------------------
# Label names used by face parsers (CelebAMask-HQ, FaRL, BiSeNet ports, SegFormer face-parsing) -> our classes.
_LABEL_ALIASES = {
    "background": "background", "bg": "background", "skin": "skin", "face": "skin",
    "l_brow": "l_brow", "left_brow": "l_brow", "left_eyebrow": "l_brow", "lb": "l_brow",
    "r_brow": "r_brow", "right_brow": "r_brow", "right_eyebrow": "r_brow", "rb": "r_brow",
    "l_eye": "l_eye", "left_eye": "l_eye", "le": "l_eye", "r_eye": "r_eye", "right_eye": "r_eye", "re": "r_eye",
    "eye_g": "eye_g", "eyeglasses": "eye_g", "glasses": "eye_g", "eyeglass": "eye_g",
    "l_ear": "l_ear", "left_ear": "l_ear", "r_ear": "r_ear", "right_ear": "r_ear",
    "ear_r": "ear_r", "earring": "ear_r", "earrings": "ear_r", "nose": "nose",
    "mouth": "mouth", "inner_mouth": "mouth", "imouth": "mouth",
    "u_lip": "u_lip", "upper_lip": "u_lip", "ulip": "u_lip", "l_lip": "l_lip", "lower_lip": "l_lip", "llip": "l_lip",
    "neck": "neck", "neck_l": "neck_l", "necklace": "neck_l", "cloth": "cloth", "clothes": "cloth",
    "hair": "hair", "hat": "hat",
}


def label_mapping(id2label: dict[int, str]) -> np.ndarray:
    """Lookup table from a parser's label ids to ours, by label name; unknown names are an error."""
    table = np.zeros(max(int(k) for k in id2label) + 1, dtype=np.uint8)
    unknown = []
    for k, name in id2label.items():
        key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
        if key not in _LABEL_ALIASES:
            unknown.append(name)
            continue
        table[int(k)] = SEG[_LABEL_ALIASES[key]]
    if unknown:
        raise ValueError(f"face parser labels {unknown} have no CelebAMask-HQ class; known names: "
                         f"{sorted(set(_LABEL_ALIASES))}")
    return table


class FaceParser:
    """A ``transformers`` semantic-segmentation face parser (SegFormer etc.): uint8 RGB -> our 19 classes."""

    def __init__(self, model: torch.nn.Module, name: str, size: int = 512,
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)):
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.size = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.table = torch.from_numpy(label_mapping(model.config.id2label).astype(np.int64))

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> Segmentation:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
            raise ValueError(f"face parser input must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb[..., :3])).permute(2, 0, 1)[None].float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                            align_corners=False)
        device = next(self.model.parameters()).device
        logits = self.model(pixel_values=((x - self.mean) / self.std).to(device)).logits.float().cpu()
        logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        ids = self.table[logits.argmax(1)[0]]
        return Segmentation(ids.numpy().astype(np.uint8), f"face-parser:{self.name}")


def load_face_parser(name_or_path: str, local_files_only: bool | None = None) -> FaceParser:
    """A face parser from a hub id (e.g. ``jonathandinu/face-parsing``) or a local folder, loaded with
    ``AutoModelForSemanticSegmentation``; a clear error when the weights are not there (never random)."""
    import json

    from transformers import AutoModelForSemanticSegmentation

    from perchead.losses.foundation import how_to_get, hub_offline

    local = hub_offline() if local_files_only is None else local_files_only
    try:
        model, info = AutoModelForSemanticSegmentation.from_pretrained(
            name_or_path, output_loading_info=True, local_files_only=local, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot load the face parser '{name_or_path}': {str(exc).splitlines()[0]}. "
                           f"{how_to_get(name_or_path)} Without one, the offline MediaPipe fallback is used "
                           "(leave --face-parser out).") from exc
    missing = info.get("missing_keys") or []
    if missing:
        raise RuntimeError(f"face parser '{name_or_path}' lacks {len(missing)} weight(s) (e.g. "
                           f"{sorted(missing)[:3]}): they would be random; refusing to use it")
    size, mean, std = 512, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    proc = Path(name_or_path) / "preprocessor_config.json"
    if not Path(name_or_path).is_dir():
        try:  # optional: SegFormer's defaults are the values above
            from huggingface_hub import hf_hub_download

            proc = Path(hf_hub_download(name_or_path, "preprocessor_config.json", local_files_only=local))
        except Exception:  # noqa: BLE001 -- absent or offline: keep the defaults
            pass
    if proc.is_file():
        cfg = json.loads(proc.read_text())
        s = cfg.get("size", size)
        size = int(s.get("height", size)) if isinstance(s, dict) else int(s)
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    return FaceParser(model, str(name_or_path), size, mean, std)


# -- offline fallback: MediaPipe Face Mesh + Selfie Segmentation ---------------------------------------------
MEDIAPIPE_SOURCE = "mediapipe-facemesh+selfie"
# Face Mesh lip contours in order (outer from the right mouth corner 61, inner from 78).
_OUTER_LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
_INNER_LIPS = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191]


def _hull(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    return fill_polygon(shape, points[ConvexHull(points).vertices])


def segment_mediapipe(rgb: np.ndarray, person: np.ndarray | None = None) -> Segmentation:
    """Offline 19-class map of a portrait from MediaPipe: background, skin, brows, eyes, nose, upper/lower
    lip, mouth (inside the lips), hair and neck (cloth below the neck's sides).

    Face parts are polygons of Face Mesh landmarks; the person silhouette comes from Selfie Segmentation
    (or ``person``, e.g. the preprocessing matte): outside the face oval it is hair above the chin and neck
    (within the jaw's width) or cloth below it. Ears, glasses, hats and jewellery are not detected.
    """
    from mediapipe.python.solutions import face_mesh_connections as fmc

    from perchead.preprocess.detect import face_mesh_landmarks
    from perchead.preprocess.matting import person_mask

    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3])
    if rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ValueError(f"segment_mediapipe wants a uint8 RGB image [H, W, 3], got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    pts = face_mesh_landmarks(rgb)
    if pts is None:
        raise ValueError("MediaPipe Face Mesh found no face in the photo, so no segmentation map can be made; "
                         "use a frontal portrait, pass a map with --seg, or a face parser with --face-parser")

    def poly(connections) -> np.ndarray:
        return fill_polygon((h, w), pts[landmark_ring(connections)])

    def hull(connections) -> np.ndarray:
        return _hull((h, w), pts[sorted({i for e in connections for i in e})])

    if person is None:
        person = person_mask(rgb) >= 0.5
    person = np.asarray(person) >= 0.5
    face = poly(fmc.FACEMESH_FACE_OVAL)
    labels = np.zeros((h, w), dtype=np.uint8)
    ys, xs = np.mgrid[0:h, 0:w]
    oval = pts[sorted({i for e in fmc.FACEMESH_FACE_OVAL for i in e})]
    chin_y = oval[:, 1].max()
    jaw_x0, jaw_x1 = oval[:, 0].min(), oval[:, 0].max()
    body = person & ~face
    labels[body & (ys < chin_y)] = SEG["hair"]
    below = body & (ys >= chin_y)
    neck = below & (xs >= jaw_x0 + 0.15 * (jaw_x1 - jaw_x0)) & (xs <= jaw_x1 - 0.15 * (jaw_x1 - jaw_x0)) \
        & (ys < chin_y + 0.5 * (jaw_x1 - jaw_x0))
    labels[below] = SEG["cloth"]
    labels[neck] = SEG["neck"]
    labels[face] = SEG["skin"]
    labels[hull(fmc.FACEMESH_NOSE)] = SEG["nose"]
    # Face Mesh's LEFT_* landmarks are the subject's own left, as our l_* classes.
    for name, conn in (("l_brow", fmc.FACEMESH_LEFT_EYEBROW), ("r_brow", fmc.FACEMESH_RIGHT_EYEBROW)):
        labels[hull(conn)] = SEG[name]
    for name, conn in (("l_eye", fmc.FACEMESH_LEFT_EYE), ("r_eye", fmc.FACEMESH_RIGHT_EYE)):
        labels[hull(conn)] = SEG[name]
    outer = fill_polygon((h, w), pts[_OUTER_LIPS])
    inner = fill_polygon((h, w), pts[_INNER_LIPS])
    centre_y = (pts[13, 1] + pts[14, 1]) / 2  # inner upper / lower lip midpoints
    labels[outer & (ys < centre_y)] = SEG["u_lip"]
    labels[outer & (ys >= centre_y)] = SEG["l_lip"]
    labels[inner] = SEG["mouth"]  # the opening between the lips (empty when the mouth is closed)
    labels[~person & ~face] = SEG["background"]
    return Segmentation(labels, MEDIAPIPE_SOURCE)


def segment_photo(rgb: np.ndarray, parser: FaceParser | None = None, mask: np.ndarray | None = None) -> Segmentation:
    """Segment a head crop with ``parser`` when given, else with the MediaPipe fallback. ``mask``
    (foreground alpha, e.g. the preprocessing matte) forces background outside the person."""
    seg = parser(rgb) if parser is not None else segment_mediapipe(rgb, mask)
    if mask is not None:
        seg.labels[np.asarray(mask) < 0.5] = SEG["background"]
    return seg


__all__ = ["MEDIAPIPE_SOURCE", "NUM_CLASSES", "PALETTE", "FaceParser", "Segmentation", "colorize", "grow_class",
           "label_mapping", "load_face_parser", "load_segmentation", "resize_segmentation", "save_segmentation",
           "segment_mediapipe", "segment_photo", "validate_segmentation"]

"""Rasterise a user's FLAME head into the template's UV position map.

FLAME is licensed (https://flame.is.tue.mpg.de) and is never bundled: the user passes their own files.

* ``generic_model.pkl`` (FLAME 2020 / 2023) holds the mean shape ``v_template`` [5023, 3] (a chumpy array in
  the original Python 2 pickle) and the triangles ``f`` [9976, 3], but no texture coordinates. Those come from
  FLAME's texture-space download, ``FLAME_texture.npz``, with ``vt`` [V_uv, 2] and ``ft`` [9976, 3] (per-face
  UV indices). Pass it as ``texture=``; a ``FLAME_texture.npz`` beside the .pkl is found on its own.
* Any ``.obj`` with UVs (``v``, ``vt`` and ``f v/vt`` lines), e.g. FLAME's ``head_template.obj``.

**Trust.** A .pkl can only be read by unpickling, and unpickling can run code. We read it with a restricted
unpickler that resolves nothing but numpy's array reconstruction and stand-ins for chumpy / scipy.sparse
classes (whose state is kept as plain data), so a hostile pickle fails instead of running; still, only pass
files you obtained from FLAME yourself. Checkpoints never go through pickle (safetensors only).

The mesh is rasterised in UV space (OBJ convention: v = 0 at the bottom row) with barycentric interpolation of
positions and vertex normals; texels no triangle covers (between UV islands) copy their nearest covered
texel. The result is translated so that its bounding-box centre matches the built-in template's (FLAME's
origin is near the neck joint, ours near the head centre), and each texel takes the region label (face,
scalp, ears, neck) of the nearest built-in template point.

A checkpoint trained with a FLAME template stores that rasterised mean shape in its weights: check FLAME's
license before you share such a checkpoint.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .template import nearest_fill


@dataclass
class PositionMap:
    xyz: np.ndarray  # [R, R, 3] float32
    normals: np.ndarray  # [R, R, 3] float32
    region: np.ndarray  # [R, R] int64
    coverage: float  # fraction of texels covered by a triangle before filling


# -- reading files -----------------------------------------------------------------------------------------
class _Opaque:
    """Stand-in for a chumpy / scipy.sparse object inside FLAME's pickle: keeps its state as data."""

    qualname = "?"

    def __init__(self, *args, **kwargs) -> None:
        self._args = args
        self._state = None

    def __setstate__(self, state) -> None:
        self._state = state


def _opaque_class(module: str, name: str) -> type:
    return type(name, (_Opaque,), {"qualname": f"{module}.{name}"})


_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
}


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in ("numpy", "numpy.core", "numpy._core") and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module.startswith(("numpy.core.", "numpy._core.")) and (module.rsplit(".", 1)[1], name) \
                in _NUMPY_GLOBALS:
            try:
                from numpy._core import multiarray, numeric  # numpy >= 2
            except ImportError:
                from numpy.core import multiarray, numeric

            return getattr(multiarray if name != "_frombuffer" else numeric, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return copyreg._reconstructor  # builds objects of the classes allowed here only
        if module in ("__builtin__", "builtins") and name == "object":
            return object
        if module == "_codecs" and name == "encode":  # how Python 3 writes array bytes at protocol 2
            import codecs

            return codecs.encode
        if module.split(".")[0] == "chumpy" or module.startswith("scipy.sparse"):
            return _opaque_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a FLAME pickle: only numpy arrays and chumpy/scipy "
            "objects are expected in generic_model.pkl (is this really a FLAME model?)")


def _as_array(value, key: str, path: Path) -> np.ndarray:
    if isinstance(value, _Opaque):
        state = value._state if isinstance(value._state, dict) else {}
        if "x" not in state:  # a chumpy leaf (Ch) keeps its value in 'x'; other nodes are expressions
            raise ValueError(f"{path}: '{key}' is a {value.qualname} whose value cannot be read without "
                             "chumpy; re-save the model with numpy arrays")
        value = state["x"]
    return np.asarray(value)


def read_flame_pkl(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(v_template [V, 3] float64, f [F, 3] int64) of a FLAME generic_model.pkl, via the restricted
    unpickler. Only for files the user passes explicitly (see the module's note on trust)."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            data = _FlameUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable FLAME pickle: {exc}") from exc
    if not isinstance(data, dict) or "v_template" not in data or "f" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: a FLAME generic_model.pkl needs 'v_template' and 'f'; found {keys}")
    return _as_array(data["v_template"], "v_template", path), _as_array(data["f"], "f", path)


def read_flame_texture(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vt [V_uv, 2], ft [F, 3]) from FLAME_texture.npz (read without pickle)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "vt" not in data or "ft" not in data:
                raise ValueError(f"{path}: needs 'vt' and 'ft' (FLAME_texture.npz); found {sorted(data)}")
            return np.asarray(data["vt"]), np.asarray(data["ft"])
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file: {exc}") from exc


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(v, f, vt, ft) of a Wavefront OBJ with texture coordinates; polygons are fanned into triangles."""
    path = Path(path)
    v, vt, f, ft = [], [], [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                v.append([float(x) for x in parts[1:4]])
            elif parts[0] == "vt":
                vt.append([float(x) for x in parts[1:3]])
            elif parts[0] == "f":
                corners = [p.split("/") for p in parts[1:]]
                if any(len(c) < 2 or not c[1] for c in corners):
                    raise ValueError(f"{path}: face '{line.strip()}' has no texture index (need f v/vt ...)")
                vi = [int(c[0]) for c in corners]
                ti = [int(c[1]) for c in corners]
                for k in range(1, len(corners) - 1):
                    f.append([vi[0], vi[k], vi[k + 1]])
                    ft.append([ti[0], ti[k], ti[k + 1]])
    if not v or not f or not vt:
        raise ValueError(f"{path}: an .obj template needs vertices, texture coordinates and faces "
                         f"(found {len(v)} v, {len(vt)} vt, {len(f)} f)")
    v_arr, vt_arr = np.asarray(v), np.asarray(vt)
    # OBJ indices are 1-based; negative ones count from the end.
    f_arr = np.asarray(f)
    ft_arr = np.asarray(ft)
    f_arr = np.where(f_arr > 0, f_arr - 1, f_arr + len(v_arr))
    ft_arr = np.where(ft_arr > 0, ft_arr - 1, ft_arr + len(vt_arr))
    return v_arr, f_arr, vt_arr, ft_arr


# -- rasterising -------------------------------------------------------------------------------------------
def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, oriented outwards (away from the centroid on average)."""
    tri = v[f]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], face_n)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    if np.sum(n * (v - v.mean(0))) < 0:  # triangles wound clockwise
        n = -n
    return n


def rasterize_uv(v: np.ndarray, f: np.ndarray, vt: np.ndarray, ft: np.ndarray, resolution: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Barycentric rasterisation of a UV-mapped mesh: (xyz [R,R,3], normals [R,R,3], covered [R,R])."""
    if len(f) != len(ft):
        raise ValueError(f"{len(f)} faces but {len(ft)} texture faces: they must correspond one to one")
    for name, idx, n in (("f", f, len(v)), ("ft", ft, len(vt))):
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"'{name}' indexes outside its {n} entries (range {idx.min()}..{idx.max()})")
    r = resolution
    normals = vertex_normals(v, f)
    # Texel (row, col) has its centre at u = (col + 0.5) / R, v = 1 - (row + 0.5) / R.
    uv_px = np.stack([vt[:, 0] * r - 0.5, (1.0 - vt[:, 1]) * r - 0.5], axis=1)
    xyz = np.zeros((r, r, 3))
    nrm = np.zeros((r, r, 3))
    covered = np.zeros((r, r), dtype=bool)
    for face, tface in zip(f, ft, strict=True):
        a, b, c = uv_px[tface]
        lo = np.maximum(np.floor(np.minimum(np.minimum(a, b), c)).astype(int), 0)
        hi = np.minimum(np.ceil(np.maximum(np.maximum(a, b), c)).astype(int), r - 1)
        if (hi < lo).any():
            continue
        cols, rows = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        p = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)
        e1, e2 = b - a, c - a
        det = e1[0] * e2[1] - e1[1] * e2[0]
        if abs(det) < 1e-12:
            continue
        d = p - a
        wb = (d[:, 0] * e2[1] - d[:, 1] * e2[0]) / det
        wc = (e1[0] * d[:, 1] - e1[1] * d[:, 0]) / det
        w = np.stack([1.0 - wb - wc, wb, wc], axis=1)
        inside = (w >= -1e-9).all(axis=1)
        if not inside.any():
            continue
        w, rr, cc = w[inside], rows.ravel()[inside], cols.ravel()[inside]
        xyz[rr, cc] = w @ v[face]
        nrm[rr, cc] = w @ normals[face]
        covered[rr, cc] = True
    xyz = nearest_fill(xyz, covered)
    nrm = nearest_fill(nrm, covered)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    return xyz, nrm, covered


@functools.lru_cache(maxsize=1)
def _reference_surface() -> tuple[np.ndarray, np.ndarray]:
    """Points and region labels of the built-in head surface (128x128 is fine enough to label regions)."""
    from perchead.geometry.head_surface import head_surface_map

    ref = head_surface_map(resolution=128)
    return (np.asarray(ref.xyz, dtype=np.float64).reshape(-1, 3), np.asarray(ref.region).reshape(-1))


def flame_position_map(path: str | Path, resolution: int = 256, texture: str | Path | None = None,
                       ) -> PositionMap:
    """Read a FLAME .pkl (+ texture .npz) or a UV-mapped .obj and rasterise it into a RxR position map,
    aligned to and labelled by the built-in template (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FLAME file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".obj":
        v, f, vt, ft = read_obj(path)
    elif suffix == ".pkl":
        v, f = read_flame_pkl(path)
        if texture is None and (path.parent / "FLAME_texture.npz").is_file():
            texture = path.parent / "FLAME_texture.npz"
        if texture is None:
            raise FileNotFoundError(
                f"{path} has no texture coordinates: pass texture=FLAME_texture.npz (from FLAME's texture "
                "space download) or use an .obj with UVs such as FLAME's head_template.obj")
        vt, ft = read_flame_texture(texture)
    else:
        raise ValueError(f"{path}: expected a FLAME generic_model.pkl or an .obj with UVs, not '{suffix}'")
    v = np.asarray(v, dtype=np.float64)
    f, ft = np.asarray(f, dtype=np.int64), np.asarray(ft, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"{path}: vertices must be [V, 3] and faces [F, 3]; got {v.shape} and {f.shape}")
    xyz, normals, covered = rasterize_uv(v, f, np.asarray(vt, dtype=np.float64), ft, resolution)

    from scipy.spatial import cKDTree

    ref_xyz, ref_region = _reference_surface()
    ref_center = 0.5 * (ref_xyz.max(0) + ref_xyz.min(0))
    pts = xyz.reshape(-1, 3)
    xyz = xyz + (ref_center - 0.5 * (pts.max(0) + pts.min(0)))
    _, nearest = cKDTree(ref_xyz).query(xyz.reshape(-1, 3))
    region = ref_region[nearest].reshape(resolution, resolution)
    return PositionMap(xyz.astype(np.float32), normals.astype(np.float32), region.astype(np.int64),
                       float(covered.mean()))

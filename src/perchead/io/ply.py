"""The standard 3DGS (INRIA) PLY: what 3DGS training code writes and SuperSplat, viser and most viewers read.

One ``vertex`` element, one row per Gaussian, every property a float32::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..M-1  opacity  scale_0..2  rot_0..3

``f_rest`` is channel-major (all red higher-order coefficients, then green, then blue), ``opacity`` is a
logit, ``scale_*`` are log standard deviations and ``rot_*`` a (w, x, y, z) quaternion -- exactly the raw
parameters :class:`~perchead.geometry.Gaussians` stores, so a write -> read round trip is bit-exact.

Writing uses one numpy structured array (fast, exact float32). Reading has its own small header parser
rather than plyfile so that the error messages can say what is wrong with a file, and so that the binary
vertex block is read with a single ``np.frombuffer`` however many extra properties a tool has added.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..geometry.gaussians import Gaussians
from .atomic import atomic_output

# PLY scalar type names (both spellings of the spec) -> numpy kind + size.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}
_MAX_HEADER_BYTES = 1 << 20  # a real header is a few kB; stop reading binary garbage early
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")


def property_names(sh_degree: int) -> list[str]:
    """Vertex property names of a 3DGS PLY with SH ``sh_degree``, in the order INRIA writes them."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _require_unbatched(gaussians: Gaussians, what: str) -> None:
    if gaussians.batch_shape:
        raise ValueError(f"{what} stores one set of Gaussians, got a batch of shape "
                         f"{tuple(gaussians.batch_shape)}; save each one separately (gaussians[i])")


def gaussians_to_records(gaussians: Gaussians) -> np.ndarray:
    """Gaussians -> structured float32 array with the 3DGS PLY vertex properties."""
    _require_unbatched(gaussians, "a 3DGS PLY")
    g = gaussians.detach().to("cpu", torch.float32)
    n, k = len(g), g.sh.shape[-2]
    sh = g.sh.numpy()
    records = np.zeros(n, dtype=[(name, "<f4") for name in property_names(g.sh_degree)])
    for name, values in (("x", g.means[:, 0]), ("y", g.means[:, 1]), ("z", g.means[:, 2]),
                         ("opacity", g.opacity_logits)):
        records[name] = values.numpy()
    for i in range(3):
        records[f"f_dc_{i}"] = sh[:, 0, i]
        records[f"scale_{i}"] = g.log_scales[:, i].numpy()
    for i in range(4):
        records[f"rot_{i}"] = g.quats[:, i].numpy()
    # Channel-major: f_rest index = channel * (K - 1) + (coefficient - 1).
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))
    for i in range(rest.shape[1]):
        records[f"f_rest_{i}"] = rest[:, i]
    return records


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write unbatched Gaussians as a binary little-endian 3DGS PLY (atomically: all or nothing)."""
    path = Path(path)
    records = gaussians_to_records(gaussians)
    header = ["ply", "format binary_little_endian 1.0", "comment written by perchead",
              f"element vertex {len(records)}"]
    header += [f"property float {name}" for name in records.dtype.names]
    header += ["end_header", ""]
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        f.write(records.tobytes())
    return path


# -- reading -------------------------------------------------------------------------------------------


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy kind); a list property has kind "list:<count>:<item>"


def _parse_header(f, name: str) -> tuple[str, list[_Element]]:
    magic = f.readline(16)
    if magic.strip() != b"ply":
        raise ValueError(f"{name}: not a PLY file (it does not start with 'ply'); expected a 3DGS .ply "
                         "or a .splat")
    fmt, elements, size = None, [], len(magic)
    while True:
        raw = f.readline(4096)
        size += len(raw)
        if not raw or size > _MAX_HEADER_BYTES:
            raise ValueError(f"{name}: PLY header has no 'end_header' line (truncated or corrupt file)")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{name}: PLY header contains non-ASCII bytes (corrupt file)") from None
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _FORMATS:
                raise ValueError(f"{name}: unsupported PLY format line {line!r}")
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            elif len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                kind = f"list:{_PLY_TYPES[words[2]]}:{_PLY_TYPES[words[3]]}"
                elements[-1].properties.append((words[4], kind))
            else:
                raise ValueError(f"{name}: cannot parse PLY header line {line!r}")
        else:
            raise ValueError(f"{name}: cannot parse PLY header line {line!r}")
    if fmt is None:
        raise ValueError(f"{name}: PLY header has no 'format' line")
    return fmt, elements


def _read_vertex_binary(f, elements: list[_Element], endian: str, name: str) -> np.ndarray:
    for el in elements:
        if any(kind.startswith("list:") for _, kind in el.properties):
            # Variable-length rows: only skippable when they come after the vertices.
            if el.name == "vertex":
                raise ValueError(f"{name}: list properties in the vertex element are not supported")
            raise ValueError(f"{name}: element {el.name!r} with list properties comes before 'vertex'; "
                             "re-export the file with the vertex element first")
        dtype = np.dtype([(p, endian + kind) for p, kind in el.properties])
        nbytes = dtype.itemsize * el.count
        if el.name != "vertex":
            f.seek(nbytes, os.SEEK_CUR)
            continue
        data = f.read(nbytes)
        if len(data) < nbytes:
            raise ValueError(f"{name}: truncated PLY: {el.count} vertices need {nbytes} bytes of data, the "
                             f"file has {len(data)}")
        return np.frombuffer(data, dtype=dtype)
    raise AssertionError("unreachable: caller checked for a vertex element")


def _read_vertex_ascii(f, elements: list[_Element], name: str) -> np.ndarray:
    for el in elements:
        if el.name != "vertex":
            for _ in range(el.count):  # one line per row in ASCII PLY, whatever its properties
                if not f.readline():
                    raise ValueError(f"{name}: truncated PLY: element {el.name!r} ends early")
            continue
        if any(kind.startswith("list:") for _, kind in el.properties):
            raise ValueError(f"{name}: list properties in the vertex element are not supported")
        rows = []
        for i in range(el.count):
            line = f.readline()
            values = line.split()
            if len(values) < len(el.properties):
                raise ValueError(f"{name}: truncated PLY: vertex row {i} of {el.count} has {len(values)} "
                                 f"values, expected {len(el.properties)}")
            rows.append(values[: len(el.properties)])
        try:
            table = np.asarray(rows, dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{name}: non-numeric value in the vertex rows ({exc})") from None
        dtype = np.dtype([(p, "f8") for p, _ in el.properties])
        return np.rec.fromarrays(table.T, dtype=dtype) if len(table) else np.zeros(0, dtype)
    raise AssertionError("unreachable: caller checked for a vertex element")


def read_ply_vertices(path: str | os.PathLike) -> np.ndarray:
    """The ``vertex`` element of any PLY as a structured numpy array (all properties, file types)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path.name)
        if not any(el.name == "vertex" for el in elements):
            raise ValueError(f"{path.name}: PLY has no 'vertex' element (elements: "
                             f"{', '.join(el.name for el in elements) or 'none'})")
        endian = _FORMATS[fmt]
        if endian is None:
            text = f.read().decode("ascii", errors="replace").splitlines(keepends=True)
            return _read_vertex_ascii(_Lines(text), elements, path.name)
        return _read_vertex_binary(f, elements, endian, path.name)


class _Lines:
    """``readline()`` over a list of text lines (ASCII PLY bodies are read in one go)."""

    def __init__(self, lines: list[str]):
        self._lines, self._i = lines, 0

    def readline(self) -> str:
        if self._i >= len(self._lines):
            return ""
        self._i += 1
        return self._lines[self._i - 1]


def _column(v: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(v[name], dtype=np.float32))


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (binary or ASCII; SH degree 0-3 from the ``f_rest`` count) into float32 Gaussians.

    Normals and any properties other than the 3DGS ones are ignored; float64 properties are converted.
    """
    path = Path(path)
    v = read_ply_vertices(path)
    names = set(v.dtype.names or ())
    for prop in _REQUIRED:
        if prop not in names:
            hint = ""
            if prop.startswith("f_dc") and {"red", "green", "blue"} <= names:
                hint = "; this looks like a coloured point cloud, not a 3D Gaussian splat"
            raise ValueError(f"{path.name}: vertex property {prop!r} missing (needed for 3DGS Gaussians)"
                             f"{hint}")
    if len(v) == 0:
        raise ValueError(f"{path.name}: PLY has zero vertices, i.e. no Gaussians")

    rest_ids = sorted(int(m.group(1)) for p in names if (m := re.fullmatch(r"f_rest_(\d+)", p)))
    if rest_ids != list(range(len(rest_ids))):
        missing = sorted(set(range(max(rest_ids) + 1)) - set(rest_ids))
        raise ValueError(f"{path.name}: vertex property 'f_rest_{missing[0]}' missing (the f_rest_* "
                         "properties must be numbered 0..M-1)")
    n_rest = len(rest_ids)
    if n_rest % 3 or n_rest // 3 + 1 not in (1, 4, 9, 16):
        raise ValueError(f"{path.name}: {n_rest} f_rest_* properties do not match an SH degree 0-3 "
                         "(expected 0, 9, 24 or 45)")
    k = n_rest // 3 + 1

    n = len(v)
    sh = torch.empty(n, k, 3)
    for c in range(3):
        sh[:, 0, c] = _column(v, f"f_dc_{c}")
        for j in range(1, k):
            sh[:, j, c] = _column(v, f"f_rest_{c * (k - 1) + j - 1}")
    means = torch.stack([_column(v, a) for a in ("x", "y", "z")], dim=-1)
    log_scales = torch.stack([_column(v, f"scale_{i}") for i in range(3)], dim=-1)
    quats = torch.stack([_column(v, f"rot_{i}") for i in range(4)], dim=-1)
    return Gaussians(means, log_scales, quats, _column(v, "opacity"), sh)

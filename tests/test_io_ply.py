"""Standard 3DGS PLY and .splat files: exact round trips, interoperability with plyfile, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from perchead.geometry import Cameras, Gaussians, project_points
from perchead.io import load_gaussians, load_ply, load_splat, read_ply_vertices, save_ply, save_splat
from perchead.io.ply import property_names
from perchead.io.splat import SPLAT_DTYPE
from perchead.render import rasterize
from perchead.render.project import ALPHA_MAX


def random_gaussians(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 3.0,
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g) * 4.0,
        sh=torch.randn(n, k, 3, generator=g),
    )


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def inria_vertex(n: int, sh_degree: int, rng: np.random.Generator, drop: tuple[str, ...] = (),
                 extra: tuple[tuple[str, str], ...] = (), dtype: str = "f4") -> np.ndarray:
    """Vertex rows the way INRIA's 3DGS code writes them (built independently of perchead.io)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * ((sh_degree + 1) ** 2 - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    fields = [(name, dtype) for name in names if name not in drop] + list(extra)
    v = np.zeros(n, dtype=fields)
    for name in v.dtype.names:
        v[name] = rng.normal(size=n) if v.dtype[name].kind == "f" else rng.integers(0, 200, n)
    return v


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_ply_round_trip_is_bit_exact(tmp_path, sh_degree):
    g = random_gaussians(257, sh_degree)
    g.means[0] = torch.tensor([1e-30, -3.4e38, float.fromhex("0x1.fffffep-1")])  # extremes survive too
    path = save_ply(g, tmp_path / "scene.ply")
    back = load_ply(path)
    assert back.sh_degree == sh_degree
    for name, value in g.tensors().items():
        loaded = back.tensors()[name]
        assert loaded.dtype == torch.float32 and loaded.shape == value.shape, name
        assert torch.equal(bits(loaded), bits(value)), name
    assert path.stat().st_size > 257 * 4 * len(property_names(sh_degree))  # header + rows, no truncation
    assert not [p for p in tmp_path.iterdir() if p.name != "scene.ply"]  # no temporary files left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private mode of the temporary file


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_plyfile_reads_what_save_ply_writes(tmp_path, sh_degree):
    g = random_gaussians(50, sh_degree, seed=1)
    save_ply(g, tmp_path / "scene.ply")
    ply = PlyData.read(str(tmp_path / "scene.ply"))
    assert ply.text is False and ply.byte_order == "<"
    v = ply["vertex"].data
    assert list(v.dtype.names) == property_names(sh_degree)
    assert all(v.dtype[name] == np.dtype("<f4") for name in v.dtype.names)
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), g.means.numpy())
    np.testing.assert_array_equal(np.stack([v["nx"], v["ny"], v["nz"]], -1), 0.0)
    np.testing.assert_array_equal(v["opacity"], g.opacity_logits.numpy())
    for i in range(3):
        np.testing.assert_array_equal(v[f"scale_{i}"], g.log_scales[:, i].numpy())
        np.testing.assert_array_equal(v[f"f_dc_{i}"], g.sh[:, 0, i].numpy())
    for i in range(4):
        np.testing.assert_array_equal(v[f"rot_{i}"], g.quats[:, i].numpy())
    k = g.sh.shape[1]
    for c in range(3):  # channel-major: all red coefficients, then green, then blue
        for j in range(1, k):
            np.testing.assert_array_equal(v[f"f_rest_{c * (k - 1) + j - 1}"], g.sh[:, j, c].numpy())


@pytest.mark.parametrize("text,byte_order", [(False, "<"), (False, ">"), (True, "=")])
def test_inria_sh3_layout_maps_every_coefficient(tmp_path, text, byte_order):
    rng = np.random.default_rng(0)
    v = inria_vertex(7, 3, rng, extra=(("red", "u1"), ("confidence", "f8")))
    # Give every (channel, coefficient) its own recognisable value: 100 * channel + coefficient + row/100.
    for c in range(3):
        v[f"f_dc_{c}"] = 100 * c + np.arange(7) / 100
        for j in range(1, 16):
            v[f"f_rest_{c * 15 + j - 1}"] = 100 * c + j + np.arange(7) / 100
    PlyData([PlyElement.describe(v, "vertex")], text=text, byte_order=byte_order).write(str(tmp_path / "a.ply"))
    g = load_ply(tmp_path / "a.ply")
    assert g.sh.shape == (7, 16, 3)
    for c in range(3):
        for j in range(16):
            expected = torch.tensor(100 * c + j + np.arange(7) / 100, dtype=torch.float32)
            torch.testing.assert_close(g.sh[:, j, c], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(g.means, torch.tensor(np.stack([v["x"], v["y"], v["z"]], -1)),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(g.quats[:, 3], torch.tensor(np.ascontiguousarray(v["rot_3"])), rtol=0,
                               atol=1e-5)


def test_float64_ply_without_normals_loads(tmp_path):
    rng = np.random.default_rng(1)
    v = inria_vertex(5, 1, rng, drop=("nx", "ny", "nz"), dtype="f8")
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "d.ply"))
    g = load_ply(tmp_path / "d.ply")
    assert g.sh_degree == 1 and g.means.dtype == torch.float32
    np.testing.assert_allclose(g.opacity_logits.numpy(), v["opacity"].astype(np.float32))
    np.testing.assert_allclose(g.sh[:, 2, 1].numpy(), v["f_rest_4"].astype(np.float32))  # green, coeff 2


def test_inria_ply_renders_its_dc_colour(tmp_path):
    """SH degree 3 file with zero higher-order terms: the pixel under each Gaussian is its DC colour."""
    rng = np.random.default_rng(2)
    v = inria_vertex(3, 3, rng)
    for name in v.dtype.names:
        if name.startswith("f_rest") or name.startswith("n"):
            v[name] = 0.0
    # Camera 3 m in front with a 40 degree lens on a 65 px image: put the centres on pixel centres,
    # 15 px apart (5 sigma), so each centre pixel sees exactly one Gaussian at full (clamped) alpha.
    size, fov = 65, 40.0
    metres_per_px = 3.0 * np.tan(np.radians(fov / 2)) / (size / 2)
    v["x"], v["y"], v["z"] = np.array([-15, 0, 15]) * metres_per_px, np.array([0, 15, -15]) * metres_per_px, 0.0
    colours = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.3], [0.1, 0.3, 0.95]])
    for c in range(3):
        v[f"f_dc_{c}"] = (colours[:, c] - 0.5) / 0.28209479177387814
    v["opacity"] = 10.0
    v["scale_0"] = v["scale_1"] = v["scale_2"] = np.log(3 * metres_per_px)
    v["rot_0"], v["rot_1"], v["rot_2"], v["rot_3"] = 1.0, 0.0, 0.0, 0.0
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "inria.ply"))

    g = load_ply(tmp_path / "inria.ply")
    assert g.sh_degree == 3
    cams = Cameras.orbit([0.0], 0.0, radius=3.0, fov_deg=fov, size=size)
    out = rasterize(g, cams.viewmats, cams.Ks, size, size, background=0.0, backend="cpu")
    pix, _ = project_points(g.means, cams.viewmats, cams.Ks)
    torch.testing.assert_close(pix % 1.0, torch.full_like(pix, 0.5), rtol=0, atol=1e-3)
    for i in range(3):
        u, w = (int(p) for p in pix[0, i])
        expected = torch.tensor(colours[i] * ALPHA_MAX, dtype=torch.float32)
        torch.testing.assert_close(out.rgb[0, w, u], expected, rtol=0, atol=1e-3)


def test_missing_property_is_named(tmp_path):
    v = inria_vertex(4, 0, np.random.default_rng(3), drop=("scale_2",))
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "example.ply"))
    with pytest.raises(ValueError, match=r"example\.ply: vertex property 'scale_2' missing"):
        load_ply(tmp_path / "example.ply")


def test_point_cloud_gets_a_hint(tmp_path):
    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                           ("blue", "u1")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "cloud.ply"))
    with pytest.raises(ValueError, match="'f_dc_0' missing.*point cloud"):
        load_ply(tmp_path / "cloud.ply")


def test_incomplete_sh_is_rejected(tmp_path):
    v = inria_vertex(2, 1, np.random.default_rng(4), drop=("f_rest_8",))
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "sh.ply"))
    with pytest.raises(ValueError, match="8 f_rest_"):
        load_ply(tmp_path / "sh.ply")


def test_truncated_ply(tmp_path):
    path = save_ply(random_gaussians(10, 1), tmp_path / "t.ply")
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(path)
    path.write_bytes(data[: data.index(b"end_header") - 5])
    with pytest.raises(ValueError, match="end_header"):
        load_ply(path)


def test_not_a_ply_and_missing_file(tmp_path):
    (tmp_path / "x.ply").write_text("hello world\n")
    with pytest.raises(ValueError, match="not a PLY file"):
        load_ply(tmp_path / "x.ply")
    (tmp_path / "empty.ply").write_bytes(b"")
    with pytest.raises(ValueError, match="not a PLY file"):
        load_ply(tmp_path / "empty.ply")
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_ply(tmp_path / "nope.ply")
    (tmp_path / "x.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match=r"unknown Gaussian file type '\.obj'"):
        load_gaussians(tmp_path / "x.obj")


def test_zero_vertices(tmp_path):
    v = inria_vertex(0, 0, np.random.default_rng(5))
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "z.ply"))
    assert len(read_ply_vertices(tmp_path / "z.ply")) == 0
    with pytest.raises(ValueError, match="zero vertices"):
        load_ply(tmp_path / "z.ply")


def test_other_elements_are_skipped(tmp_path):
    rng = np.random.default_rng(6)
    v = inria_vertex(4, 0, rng)
    cam = np.ones(2, dtype=[("fx", "f8"), ("id", "i4")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(cam, "camera"), PlyElement.describe(v, "vertex"),
             PlyElement.describe(faces, "face")]).write(str(tmp_path / "m.ply"))
    g = load_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(g.means[:, 1].numpy(), v["y"])


def test_batched_gaussians_are_refused(tmp_path):
    g = random_gaussians(4, 0)
    batched = Gaussians(*(t.unsqueeze(0).repeat(2, *([1] * t.ndim)) for t in g.tensors().values()))
    with pytest.raises(ValueError, match="batch"):
        save_ply(batched, tmp_path / "b.ply")
    with pytest.raises(ValueError, match="batch"):
        save_splat(batched, tmp_path / "b.splat")
    assert not list(tmp_path.iterdir())


def test_splat_round_trip_within_quantisation(tmp_path):
    g = random_gaussians(300, 2, seed=7)
    g.sh[:, 0] = torch.rand(300, 3) * 3.0 - 1.5  # DC colours inside and outside [0, 1]
    path = save_splat(g, tmp_path / "s.splat")
    assert path.stat().st_size == 32 * 300
    back = load_splat(path)
    assert back.sh_degree == 0 and len(back) == 300

    # The file is sorted by descending scale volume * opacity; match rows through the (exact) positions.
    raw = np.fromfile(path, SPLAT_DTYPE)
    order = torch.tensor([int(np.flatnonzero((g.means.numpy() == p).all(-1))[0]) for p in raw["position"]])
    assert sorted(order.tolist()) == list(range(300))
    src = g.select(order)
    key = src.scales.prod(-1) * src.opacities
    assert bool((key[1:] <= key[:-1]).all())
    torch.testing.assert_close(back.means, src.means, rtol=0, atol=0)
    torch.testing.assert_close(back.scales, src.scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(back.rgb, src.rgb.clamp(0, 1), rtol=0, atol=0.5 / 255 + 1e-6)
    op = src.opacities.clamp(1e-6, 1 - 1e-6)
    assert float((back.opacities - op).abs().max()) <= 0.5 / 255 + 1e-6
    cos = (back.rotations * src.rotations).sum(-1).abs()
    assert float(cos.min()) > 0.999


def test_splat_rejects_partial_records(tmp_path):
    (tmp_path / "bad.splat").write_bytes(b"\0" * 33)
    with pytest.raises(ValueError, match="32-byte"):
        load_splat(tmp_path / "bad.splat")
    (tmp_path / "empty.splat").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_splat(tmp_path / "empty.splat")

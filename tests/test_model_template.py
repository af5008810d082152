"""The head template (UV position map -> 4x4-point tokens) and the FLAME loader on small test meshes."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perchead.model import HeadTemplate, PercHead, preset
from perchead.model.flame import flame_position_map, read_flame_pkl


@pytest.fixture(scope="module")
def builtin64():
    return HeadTemplate.builtin(64)


def test_builtin_template_tokens(builtin64):
    t = builtin64
    assert t.resolution == 64 and t.num_tokens == 256 and t.num_points == 4096
    assert 0.2 < t.head_size() < 0.45  # a head with neck, in metres
    assert t.xyz.requires_grad is False and "xyz" in dict(t.named_buffers())
    assert set(t.region.unique().tolist()) <= {0, 1, 2, 3}
    # to_tokens is the exact inverse of pixel_shuffle(4): the layout the Gaussian heads rely on.
    feats = torch.cat([t.xyz, t.normals], dim=-1)  # [R, R, 6]
    tokens = t.to_tokens(feats)  # [256, 96]
    assert tokens.shape == (256, 96)
    back = F.pixel_shuffle(tokens.T.reshape(1, 96, 16, 16), 4)[0].permute(1, 2, 0)
    assert torch.equal(back, feats)
    # ...and token k holds exactly the points token_of_point assigns to it.
    owner = t.token_of_point()
    k = 100
    pts = tokens[k].reshape(6, 16).T[:, :3]
    expected = t.xyz.reshape(-1, 3)[owner == k]
    assert torch.equal(pts.sort(dim=0).values, expected.sort(dim=0).values)


def _plane_mesh(n: int = 6, u_max: float = 1.0):
    """A tilted planar grid z = 0.3x + 0.1y over [-0.1, 0.1]^2 (metres) with UVs over [0, u_max] x [0, 1]."""
    xs = np.linspace(-0.1, 0.1, n)
    x, y = np.meshgrid(xs, xs)
    v = np.stack([x.ravel(), y.ravel(), 0.3 * x.ravel() + 0.1 * y.ravel()], 1)
    vt = np.stack([(x.ravel() + 0.1) / 0.2 * u_max, (y.ravel() + 0.1) / 0.2], 1)
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            f += [[a, b, d], [a, d, c]]
    return v, np.asarray(f), vt


def _write_obj(path, v, f, vt):
    lines = [f"v {a:.9f} {b:.9f} {c:.9f}" for a, b, c in v] + [f"vt {a:.9f} {b:.9f}" for a, b in vt]
    lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in tri) for tri in f]
    path.write_text("\n".join(lines) + "\n")


def _write_flame_pkl(path, v, f, vt):
    """generic_model.pkl as FLAME ships it: v_template a chumpy Ch (faked here), f a numpy array; the UVs in
    a FLAME_texture.npz beside it."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        data = {"v_template": Ch(v), "f": f.astype(np.uint32), "shapedirs": Ch(np.zeros((len(v), 3, 2))),
                "bs_style": "lbs"}
        path.write_bytes(pickle.dumps(data, protocol=2))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    np.savez(path.parent / "FLAME_texture.npz", vt=vt, ft=f, mean=np.zeros(3))


def test_obj_rasterises_planar_mesh_exactly(tmp_path):
    v, f, vt = _plane_mesh()
    _write_obj(tmp_path / "head.obj", v, f, vt)
    m = flame_position_map(tmp_path / "head.obj", resolution=32)
    assert m.xyz.shape == (32, 32, 3) and m.coverage == 1.0
    # Texel (row, col): u = (col + .5) / R, v = 1 - (row + .5) / R  ->  x = 0.2u - 0.1, y = 0.2v - 0.1.
    cols, rows = np.meshgrid(np.arange(32), np.arange(32))
    x = 0.2 * (cols + 0.5) / 32 - 0.1
    y = 0.2 * (1 - (rows + 0.5) / 32) - 0.1
    expected = np.stack([x, y, 0.3 * x + 0.1 * y], -1)
    shift = m.xyz - expected  # the map is moved onto the built-in template's centre: one constant shift
    assert np.allclose(shift, shift[0, 0], atol=1e-6)
    normal = np.array([-0.3, -0.1, 1.0]) / np.linalg.norm([-0.3, -0.1, 1.0])
    assert np.allclose(np.abs(m.normals @ normal), 1.0, atol=1e-5)
    assert set(np.unique(m.region)) <= {0, 1, 2, 3}


def test_empty_texels_copy_their_nearest_neighbour(tmp_path):
    v, f, vt = _plane_mesh(u_max=0.5)  # only the left half of the UV square is covered
    _write_obj(tmp_path / "half.obj", v, f, vt)
    m = flame_position_map(tmp_path / "half.obj", resolution=16)
    assert m.coverage == 0.5
    assert np.array_equal(m.xyz[:, 8:], np.repeat(m.xyz[:, 7:8], 8, axis=1))


def test_flame_pkl_and_obj_give_the_same_map(tmp_path):
    v, f, vt = _plane_mesh()
    _write_obj(tmp_path / "head.obj", v, f, vt)
    _write_flame_pkl(tmp_path / "generic_model.pkl", v, f, vt)
    assert "chumpy" not in sys.modules
    v_read, f_read = read_flame_pkl(tmp_path / "generic_model.pkl")
    assert np.array_equal(v_read, v) and np.array_equal(f_read, f)
    a = flame_position_map(tmp_path / "generic_model.pkl", resolution=32)  # finds FLAME_texture.npz
    b = flame_position_map(tmp_path / "head.obj", resolution=32)
    assert np.allclose(a.xyz, b.xyz, atol=1e-6) and np.array_equal(a.region, b.region)
    template = HeadTemplate.from_flame(tmp_path / "generic_model.pkl", resolution=64)
    model = PercHead(preset("tiny", template="flame:generic_model.pkl"), template=template)
    assert torch.equal(model.template.xyz, template.xyz)


def test_flame_pkl_needs_texture_coordinates(tmp_path):
    v, f, vt = _plane_mesh()
    _write_flame_pkl(tmp_path / "generic_model.pkl", v, f, vt)
    (tmp_path / "FLAME_texture.npz").unlink()
    with pytest.raises(FileNotFoundError, match="FLAME_texture.npz"):
        flame_position_map(tmp_path / "generic_model.pkl")


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    for protocol in (2, 4):
        (tmp_path / "generic_model.pkl").write_bytes(pickle.dumps({"v_template": Evil(), "f": 0},
                                                                  protocol=protocol))
        with pytest.raises(ValueError, match=r"refusing to load (__builtin__|builtins)\.exec"):
            read_flame_pkl(tmp_path / "generic_model.pkl")
        assert not marker.exists()


def test_obj_without_uvs_is_a_clear_error(tmp_path):
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="no texture index"):
        flame_position_map(tmp_path / "bad.obj")
    with pytest.raises(FileNotFoundError):
        flame_position_map(tmp_path / "missing.obj")

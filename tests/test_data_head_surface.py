"""The procedural head surface atlas (perchead.geometry.head_surface)."""

import pytest
import torch

from perchead.geometry.head_surface import (
    EARS,
    NECK,
    REGION_NAMES,
    AtlasLayout,
    HeadShape,
    head_surface_map,
)


@pytest.fixture(scope="module")
def hmap():
    return head_surface_map()


def _blocks(x: torch.Tensor, b: int = 4) -> torch.Tensor:
    r = x.shape[0] // b
    return x.reshape(r, b, r, b, -1).permute(0, 2, 1, 3, 4).reshape(r, r, b * b, x.shape[-1])


def test_shapes_dtypes_finite(hmap):
    assert hmap.xyz.shape == (256, 256, 3) and hmap.xyz.dtype == torch.float32
    assert hmap.normals.shape == (256, 256, 3) and hmap.region.shape == (256, 256)
    assert hmap.region.dtype == torch.int64
    assert torch.isfinite(hmap.xyz).all() and torch.isfinite(hmap.normals).all()
    assert torch.allclose(hmap.normals.norm(dim=-1), torch.ones(256, 256), atol=1e-4)
    assert set(hmap.region.unique().tolist()) == set(range(len(REGION_NAMES)))


def test_head_size_in_range(hmap):
    lay = AtlasLayout.for_resolution(256)
    head = hmap.xyz[: lay.head, : lay.head].reshape(-1, 3)
    width, height, depth = (head.max(0).values - head.min(0).values).tolist()
    assert 0.145 <= width <= 0.165
    assert 0.21 <= height <= 0.24  # chin to crown
    assert 0.19 <= depth <= 0.235  # back of the skull to the nose tip
    centre = (head.max(0).values + head.min(0).values) / 2
    assert centre.abs().max() < 0.03  # origin near the head centre
    nose_tip = head[head[:, 2].argmax()]
    assert nose_tip[2] > 0.1 and abs(nose_tip[0]) < 0.01  # face towards +z, nose in the middle


def test_normals_point_outward(hmap):
    lay = AtlasLayout.for_resolution(256)
    h = lay.head
    head_p, head_n = hmap.xyz[:h, :h], hmap.normals[:h, :h]
    assert ((head_p * head_n).sum(-1) > 0).float().mean() > 0.999
    # Neck tube rows (the cap excluded): normals point away from the neck's vertical axis.
    tube_p, tube_n = hmap.xyz[h:h + 16], hmap.normals[h:h + 16]
    radial = tube_p.clone()
    radial[..., 1] = 0
    radial[..., 2] -= HeadShape().neck_z
    assert ((radial * tube_n).sum(-1) > 0).float().mean() > 0.99
    # Ears: away from each ear's centroid; the left ear is on +x.
    for rows, sign in ((slice(0, h // 2), 1), (slice(h // 2, h), -1)):
        p, n = hmap.xyz[rows, h:], hmap.normals[rows, h:]
        assert (hmap.region[rows, h:] == EARS).all() and sign * p[..., 0].mean() > 0.07
        c = p.reshape(-1, 3).mean(0)
        assert (((p - c) * n).sum(-1) > 0).float().mean() > 0.95
    assert (hmap.region[h:] == NECK).all()


def test_blocks_are_compact_and_neighbours_close(hmap):
    blocks = _blocks(hmap.xyz)
    diam = torch.cdist(blocks, blocks).amax((-1, -2))
    assert diam.max() < 0.02
    assert diam.flatten().quantile(0.99) < 0.017
    assert diam.median() < 0.011
    # Grid neighbours are surface neighbours (seams between atlas parts aside).
    lay = AtlasLayout.for_resolution(256)
    head = hmap.xyz[: lay.head, : lay.head]
    step = torch.cat([(head[1:] - head[:-1]).norm(dim=-1).flatten(),
                      (head[:, 1:] - head[:, :-1]).norm(dim=-1).flatten()])
    assert step.max() < 0.01


def test_points_spread_evenly(hmap):
    # Area of each grid cell of the head square: no strong clustering anywhere (octahedral equal-area map).
    lay = AtlasLayout.for_resolution(256)
    h = hmap.xyz[: lay.head, : lay.head]
    area = torch.linalg.cross(h[1:, :-1] - h[:-1, :-1], h[:-1, 1:] - h[:-1, :-1], dim=-1).norm(dim=-1)
    lo, mid, hi = area.flatten().quantile(torch.tensor([0.01, 0.5, 0.99])).tolist()
    assert lo > 0.3 * mid and hi < 3.0 * mid


def test_deterministic_and_shape_dependent():
    a = head_surface_map()
    assert torch.equal(a.xyz, head_surface_map().xyz)
    wide = head_surface_map(HeadShape(width=0.17, nose_length=0.06))
    assert (wide.xyz[..., 0].max() - a.xyz[..., 0].max()) > 0.005


@pytest.mark.parametrize("res", [32, 64, 128])
def test_other_resolutions(res):
    m = head_surface_map(resolution=res)
    assert m.xyz.shape == (res, res, 3) and torch.isfinite(m.xyz).all()
    assert set(m.region.unique().tolist()) == {0, 1, 2, 3}


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="multiple of 8"):
        head_surface_map(resolution=100)
    with pytest.raises(ValueError, match="width"):
        HeadShape(width=-0.1)

"""The training sampler: shapes, determinism, face-visible inputs, mixing ratio, batching."""

import pytest
import torch

from perchead.data.sampler import HeadViewsDataset, SamplerConfig, collate_views
from perchead.data.synth import SynthConfig, generate


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    # Seed 1 with these settings gives both kinds in the train split.
    cfg = SynthConfig(subjects=8, views=6, size=32, seed=1, kind="mixed", wild_fraction=0.4,
                      split_fractions=(1.0, 0.0, 0.0), surface_resolution=32)
    generate(cfg, out, progress=False)
    return out


def test_sample_contents(root):
    ds = HeadViewsDataset(root, SamplerConfig(studio_fraction=1.0, seed=0))
    s = ds[0]
    assert s["kind"] == "studio" and s["images"].shape == (4, 3, 32, 32)
    assert s["masks"].shape == (4, 1, 32, 32) and s["viewmats"].shape == (4, 4, 4) and s["Ks"].shape == (4, 3, 3)
    assert s["segmentation"].shape == (4, 32, 32) and s["segmentation"].dtype == torch.int64
    assert len(set(s["views"])) == 4  # input + 3 distinct targets
    assert 0 <= s["images"].min() and s["images"].max() <= 1
    # Background composited to white where the mask is empty.
    bg = s["masks"][0, 0] == 0
    assert torch.allclose(s["images"][0][:, bg], torch.ones(1))


def test_wild_samples_are_input_only(root):
    ds = HeadViewsDataset(root, SamplerConfig(studio_fraction=0.0))
    s = ds[3]
    assert s["kind"] == "wild" and s["images"].shape[0] == 1


def test_deterministic_per_seed_and_epoch(root):
    cfg = SamplerConfig(seed=5, samples_per_epoch=20)
    a, b = HeadViewsDataset(root, cfg), HeadViewsDataset(root, cfg)
    draws_a = [(s.id, v) for s, v in (a.draw(i) for i in range(20))]
    assert draws_a == [(s.id, v) for s, v in (b.draw(i) for i in range(20))]
    b.set_epoch(1)
    assert draws_a != [(s.id, v) for s, v in (b.draw(i) for i in range(20))]
    assert torch.equal(a[7]["images"], HeadViewsDataset(root, cfg)[7]["images"])


def test_inputs_show_a_face(root):
    ds = HeadViewsDataset(root, SamplerConfig(studio_fraction=1.0, samples_per_epoch=60, max_input_yaw_deg=60))
    for i in range(60):
        subj, idx = ds.draw(i)
        v = subj.views[idx[0]]
        assert v.face_visible  # synthetic views carry the precomputed flag (|yaw| <= 90)
    # A callable overrides the flags: only views named "00" may be inputs.
    ds2 = HeadViewsDataset(root, SamplerConfig(studio_fraction=1.0), face_visible=lambda s, v: v.name == "00")
    assert all(ds2.draw(i)[0].views[ds2.draw(i)[1][0]].name == "00" for i in range(20))
    # Off: back views can be inputs too.
    ds3 = HeadViewsDataset(root, SamplerConfig(studio_fraction=1.0, drop_faceless_inputs=False, samples_per_epoch=200))
    assert any(not s.views[v[0]].face_visible for s, v in (ds3.draw(i) for i in range(200)))


def test_mixing_ratio(root):
    ds = HeadViewsDataset(root, SamplerConfig(studio_fraction=0.7, samples_per_epoch=400))
    kinds = [ds.draw(i)[0].kind for i in range(400)]
    assert 0.6 < kinds.count("studio") / 400 < 0.8


def test_collate_and_resize(root):
    ds = HeadViewsDataset(root, SamplerConfig(studio_fraction=0.5, image_size=16, seed=2))
    items = [ds[i] for i in range(8)]
    assert {it["kind"] for it in items} == {"studio", "wild"}
    batch = collate_views(items)
    assert batch["images"].shape == (8, 4, 3, 16, 16) and batch["view_valid"].shape == (8, 4)
    wild = [i for i, it in enumerate(items) if it["kind"] == "wild"][0]
    assert batch["view_valid"][wild].tolist() == [True, False, False, False]
    assert torch.allclose(batch["Ks"][wild, 0, 0, 0], items[wild]["Ks"][0, 0, 0])
    assert items[0]["Ks"][0, 0, 2] == pytest.approx(8.0)  # principal point scaled with the image


def test_bad_config_and_empty_split(root):
    with pytest.raises(ValueError, match="no subjects in split 'test'"):
        HeadViewsDataset(root, SamplerConfig(split="test"))
    with pytest.raises(ValueError, match="studio_fraction"):
        SamplerConfig(studio_fraction=1.5)

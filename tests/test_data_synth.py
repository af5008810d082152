"""Synthetic heads: determinism, variety at the back of the head, masks, cameras, segmentation, resume."""

import json

import numpy as np
import pytest
import torch

from perchead.data.format import SEG, load_view, read_dataset
from perchead.data.synth import SynthConfig, generate, make_subject, render_with_labels
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, project_points
from perchead.geometry.head_surface import head_surface_map
from perchead.render import rasterize

CFG = SynthConfig(subjects=4, views=6, size=64, seed=3, surface_resolution=64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    report = generate(CFG, out, progress=False)
    assert report.written == 4 and report.skipped == 0
    return out


def test_layout_and_reader(dataset):
    ds = read_dataset(dataset, check_images=True)
    assert len(ds) == 4 and all(s.kind == "studio" and len(s.views) == 6 for s in ds.subjects)
    v = ds.subjects[0].views[0]
    assert v.width == v.height == 64 and v.segmentation is not None and v.face_visible is True
    yaws = [abs(x.yaw_deg) for x in ds.subjects[0].views]
    assert max(yaws) > 120  # views all around, back included


def test_deterministic_and_independent_of_count():
    a = make_subject(CFG, 2)
    b = make_subject(SynthConfig(subjects=50, views=6, size=64, seed=3, surface_resolution=64), 2)
    assert torch.equal(a.gaussians.means, b.gaussians.means) and torch.equal(a.gaussians.sh, b.gaussians.sh)
    assert torch.equal(a.cameras.viewmats, b.cameras.viewmats) and a.split == b.split
    c = make_subject(SynthConfig(subjects=4, views=6, size=64, seed=4, surface_resolution=64), 2)
    assert c.gaussians.means.shape != a.gaussians.means.shape or not torch.equal(c.gaussians.means, a.gaussians.means)


def test_rerun_writes_identical_files(dataset, tmp_path):
    generate(SynthConfig(subjects=1, views=6, size=64, seed=3, surface_resolution=64), tmp_path, progress=False)
    for name in ("images/00.png", "images/03.png", "segmentation/03.png", "cameras.json"):
        assert (tmp_path / "subjects/synth_00000" / name).read_bytes() == \
            (dataset / "subjects/synth_00000" / name).read_bytes()


def test_backs_of_heads_all_differ():
    cams = Cameras.orbit([180.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, 64)
    backs = []
    for i in range(6):
        s = make_subject(CFG, i)
        r = render_with_labels(s.gaussians, s.labels, cams)
        backs.append((r.rgb * r.alpha[..., None] + (1 - r.alpha[..., None]))[0])
    for i in range(6):
        for j in range(i + 1, 6):
            diff = (backs[i] - backs[j]).abs().mean().item()
            assert diff > 0.02, f"subjects {i} and {j} look alike from behind (mean abs diff {diff:.4f})"


def test_masks_match_alpha_and_colour_matches_rasterize(dataset):
    s = make_subject(CFG, 1)
    r = render_with_labels(s.gaussians, s.labels, s.cameras)
    ds = read_dataset(dataset)
    for c, view in enumerate(ds.subjects[1].views):
        lv = load_view(view)
        assert (lv.mask[0] - r.alpha[c]).abs().max() <= 0.5 / 255 + 1e-6
    with torch.no_grad():
        ref = rasterize(s.gaussians, s.cameras.viewmats, s.cameras.Ks, 64, 64, background=0.0, backend="cpu")
    premult = r.rgb * r.alpha[..., None]
    assert (premult - ref.rgb).abs().max() < 1e-4
    assert (r.alpha - ref.alpha[..., 0]).abs().max() < 1e-5


def test_cameras_reproject_head_into_mask(dataset):
    ds = read_dataset(dataset)
    for subj in ds.subjects[:2]:
        meta = json.loads((subj.root / "subject.json").read_text())
        from perchead.geometry.head_surface import HeadShape

        surf = head_surface_map(HeadShape(**meta["head_shape"]), 64).xyz.reshape(-1, 3)
        for view in subj.views:
            mask = load_view(view).mask[0]
            pix, z = project_points(surf, view.world_to_cam[None], view.K[None])
            pix = pix[0]
            inside = (pix[:, 0] >= 0) & (pix[:, 0] < 64) & (pix[:, 1] >= 0) & (pix[:, 1] < 64) & (z[0] > 0)
            assert inside.float().mean() > 0.9  # the head is in frame
            px = pix[inside].long()
            hit = mask[px[:, 1], px[:, 0]] > 0.5
            assert hit.float().mean() > 0.98, f"{subj.id}/{view.name}: {hit.float().mean():.3f} on the mask"


def test_segmentation_is_consistent(dataset):
    ds = read_dataset(dataset)
    subj = ds.subjects[0]
    front = load_view(subj.views[0])
    seg, mask = front.segmentation, front.mask[0]
    assert ((seg == SEG["background"]) == (mask < 0.5)).float().mean() > 0.99
    present = set(seg.unique().tolist())
    assert {SEG["skin"], SEG["nose"], SEG["neck"]} <= present
    assert present & {SEG["l_eye"], SEG["r_eye"], SEG["u_lip"], SEG["l_lip"]}
    back = max(subj.views, key=lambda v: abs(v.yaw_deg))
    back_seg = load_view(back).segmentation
    assert not set(back_seg.unique().tolist()) & {SEG["nose"], SEG["l_eye"], SEG["r_eye"], SEG["u_lip"]}


def test_resume_skips_finished_and_redoes_broken(tmp_path):
    cfg = SynthConfig(subjects=2, views=2, size=32, seed=0, surface_resolution=32)
    generate(cfg, tmp_path, progress=False)
    (tmp_path / "subjects/synth_00001/subject.json").unlink()  # as if killed mid-subject
    report = generate(SynthConfig(subjects=3, views=2, size=32, seed=0, surface_resolution=32), tmp_path,
                      progress=False)
    assert (report.written, report.skipped) == (2, 1)
    assert len(read_dataset(tmp_path)) == 3


def test_kinds_and_splits():
    cfg = SynthConfig(subjects=40, views=4, size=32, seed=0, kind="mixed", wild_fraction=0.5, surface_resolution=32)
    from perchead.data.synth import subject_kind, subject_split

    kinds = [subject_kind(cfg, i) for i in range(200)]
    splits = [subject_split(cfg, i) for i in range(200)]
    assert 60 < kinds.count("wild") < 140
    assert splits.count("train") > 130 and splits.count("val") > 5 and splits.count("test") > 5
    w = next(i for i, k in enumerate(kinds) if k == "wild")
    s = make_subject(cfg, w)
    assert len(s.cameras) == 1 and abs(float(s.yaw_deg[0])) <= cfg.wild_yaw_deg
    assert s.lighting["lighting"] == "key+ambient"
    with pytest.raises(ValueError, match="split_fractions"):
        SynthConfig(split_fractions=(0.5, 0.2, 0.2))


def test_cli(tmp_path, capsys):
    from perchead.cli import main

    assert main(["synth", "--out", str(tmp_path), "--subjects", "1", "--views", "2", "--size", "32",
                 "--quiet"]) == 0
    assert "wrote 1 subject(s)" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path), "--subjects", "0"]) == 1
    assert np.asarray(read_dataset(tmp_path).subjects[0].views[0].K).shape == (3, 3)

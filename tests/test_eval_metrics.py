"""Metrics: PSNR/SSIM against hand-computed values and scikit-image, masks, unavailable metrics, identity."""

from __future__ import annotations

import logging
import math
import sys
import types

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from perchead.eval import metrics
from perchead.eval.metrics import (
    DlibIdentityMetric,
    MetricConfig,
    MetricSuite,
    MetricUnavailable,
    available_metrics,
    build_metric,
    psnr,
    ssim,
)

SK_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}


def chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]


def random_pair(rng, h, w, noise=0.1):
    a = rng.random((h, w, 3)).astype(np.float32)
    b = np.clip(a + noise * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    return a, b


# ------------------------------------------------------------------------------------------------ PSNR
def test_psnr_hand_computed():
    target = torch.zeros(1, 3, 2, 2)
    assert float(psnr(target + 0.1, target)) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    pred = target.clone()
    pred[0, 1, 0, 1] = 0.5  # one of 12 values off by 0.5: MSE = 0.25 / 12
    assert float(psnr(pred, target)) == pytest.approx(10 * math.log10(48.0), abs=1e-9)


def test_psnr_masked_ignores_pixels_outside_the_mask():
    target = torch.full((1, 3, 4, 4), 0.5)
    pred = target.clone()
    pred[..., :2, :] = 1.0  # top half badly wrong
    pred[..., 2:, :] += 0.05  # bottom half slightly off
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, :] = 1.0
    assert float(psnr(pred, target, mask)) == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-4)
    # Without the mask the bad half counts: MSE (0.5^2 + 0.05^2) / 2, by hand (was `< 10`, 11% from 8.99 dB).
    assert float(psnr(pred, target)) == pytest.approx(10 * math.log10(2 / (0.5**2 + 0.05**2)), abs=1e-4)
    with pytest.raises(ValueError, match="mask is empty"):
        psnr(pred, target, torch.zeros(1, 1, 4, 4))


def test_psnr_matches_skimage_and_identical_is_inf():
    rng = np.random.default_rng(0)
    for h, w in ((17, 23), (64, 48)):
        a, b = random_pair(rng, h, w)
        ref = peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0)
        assert float(psnr(chw(b), chw(a))) == pytest.approx(ref, abs=1e-9)
    a8 = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    b8 = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    # the numpy uint8 wrapper: same number as skimage on the uint8 images with data range 255 (up to the
    # float32 rounding of x / 255)
    assert float(psnr(b8, a8)) == pytest.approx(peak_signal_noise_ratio(a8, b8, data_range=255), abs=1e-6)
    assert math.isinf(float(psnr(a8, a8))) and float(psnr(a8, a8)) > 0


# ------------------------------------------------------------------------------------------------ SSIM
def test_ssim_hand_computed_constant_images():
    # constant images: zero variance and covariance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 1.0) ** 2
    a, b = 0.5, 0.25
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    x, y = torch.full((1, 3, 12, 12), a), torch.full((1, 3, 12, 12), b)
    assert float(ssim(x, y)) == pytest.approx(expected, abs=1e-6)


def test_ssim_hand_computed_single_window():
    # an 11x11 image has exactly one window position: evaluate Wang et al.'s formula there directly
    rng = np.random.default_rng(1)
    x, y = random_pair(rng, 11, 11, noise=0.2)
    d = np.arange(11) - 5.0
    g = np.exp(-(d**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(3):
        xc, yc = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        mx, my = (win * xc).sum(), (win * yc).sum()
        vx, vy = (win * xc * xc).sum() - mx * mx, (win * yc * yc).sum() - my * my
        cov = (win * xc * yc).sum() - mx * my
        vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    assert float(ssim(chw(x), chw(y))) == pytest.approx(np.mean(vals), abs=1e-5)


def test_ssim_matches_skimage_and_identical_is_one():
    rng = np.random.default_rng(2)
    for h, w in ((11, 11), (32, 45), (64, 64)):
        a, b = random_pair(rng, h, w)
        ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=2, **SK_SSIM)
        assert float(ssim(chw(b), chw(a))) == pytest.approx(ref, abs=2e-5)
    face = data.astronaut()[40:200, 150:330]
    blurred = np.clip(face.astype(np.float32) / 255 * 0.8 + 0.1, 0, 1)
    ref = structural_similarity(face.astype(np.float64) / 255, blurred.astype(np.float64), channel_axis=2,
                                **SK_SSIM)
    assert float(ssim(blurred, face)) == pytest.approx(ref, abs=2e-5)
    assert float(ssim(face, face)) == pytest.approx(1.0, abs=1e-6)


def test_masked_ssim_averages_the_map_inside_the_mask(monkeypatch):
    # the masking arithmetic alone, on a known map: the value at valid position (i, j) is j
    def fake_ssim(pred, target, return_map=False):
        b, _, h, w = pred.shape
        cols = torch.arange(w - 10, dtype=torch.float32).expand(b, 3, h - 10, w - 10)
        return cols if return_map else cols.flatten(1).mean(1)

    monkeypatch.setattr(metrics, "_ssim", fake_ssim)
    img = torch.rand(2, 3, 20, 24)
    mask = torch.zeros(2, 1, 20, 24)
    mask[0, :, :, 5:8] = 1.0  # image columns 5..7 = map columns 0..2
    mask[1, :, :, 15] = 1.0  # image column 15 = map column 10
    np.testing.assert_allclose(ssim(img, img, mask).numpy(), [1.0, 10.0])


def test_masked_ssim_matches_skimage_map():
    rng = np.random.default_rng(3)
    a, b = random_pair(rng, 40, 40)
    _, full = structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=2, full=True,
                                    **SK_SSIM)
    mask = np.zeros((40, 40), np.float32)
    mask[8:30, 12:35] = 1.0
    sel = full.mean(axis=2)[5:-5, 5:-5][mask[5:-5, 5:-5] > 0]
    assert float(ssim(chw(b), chw(a), torch.from_numpy(mask))) == pytest.approx(sel.mean(), abs=2e-5)
    assert float(ssim(chw(a), chw(a), torch.from_numpy(mask))) == pytest.approx(1.0, abs=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        psnr(torch.full((1, 3, 4, 4), 2.0), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="HxWx3"):
        psnr(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="mask must be"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="unknown metric"):
        build_metric("fid")


# ----------------------------------------------------------------------------------- unavailable metrics
def _hide_packages(monkeypatch, *names):
    real = metrics.importlib.import_module

    def fake(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(metrics.importlib, "import_module", fake)


@pytest.mark.parametrize(("name", "package"), [("lpips", "lpips"), ("dreamsim", "dreamsim"),
                                               ("id_arcface", "insightface")])
def test_missing_package_gives_a_clear_message(monkeypatch, name, package):
    _hide_packages(monkeypatch, "lpips", "dreamsim", "insightface", "torchvision", "onnxruntime")
    with pytest.raises(MetricUnavailable, match=rf"`{package}` package.*pip install"):
        build_metric(name)
    reason = available_metrics()[name]
    assert reason is not None and package in reason


def test_suite_reports_unavailable_once_and_leaves_the_column_empty(monkeypatch, caplog, tmp_path):
    _hide_packages(monkeypatch, "lpips")
    with caplog.at_level(logging.WARNING, logger="perchead.eval.metrics"):
        suite = MetricSuite(["psnr", "ssim", "lpips"])
        x = torch.rand(2, 3, 16, 16)
        suite.update(x, x.clamp(0.1, 0.9), info=[{"subject": "a"}, {"subject": "b"}])
        suite.update(x, x)
    assert sum("lpips" in r.getMessage() for r in caplog.records) == 1
    assert set(suite.unavailable) == {"lpips"}
    assert "`lpips` package" in suite.settings()["lpips"]["unavailable"]
    assert len(suite.rows) == 4 and all(math.isnan(r["lpips"]) for r in suite.rows)
    assert suite.rows[0]["subject"] == "a" and suite.rows[0]["psnr"] > 0
    summary = suite.summary()
    assert summary["lpips"]["n"] == 0 and summary["lpips"]["nan"] == 4
    assert summary["psnr"]["inf"] == 2 and summary["psnr"]["n"] == 2  # identical pairs are inf, not averaged
    assert summary["ssim"]["n"] == 4
    report = suite.report()
    assert "lpips: mean unavailable" in report and "window=gaussian 11x11" in report
    lines = suite.write_csv(tmp_path / "rows.csv").read_text().splitlines()
    assert lines[0].split(",") == ["subject", "psnr", "ssim", "lpips"]
    assert lines[1].endswith(",")  # empty LPIPS cell, not a number


def test_dreamsim_without_weights_fails_instead_of_downloading(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("dreamsim")
    fake.dreamsim = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "dreamsim", fake)
    with pytest.raises(MetricUnavailable, match="DreamSim weights are not in"):
        build_metric("dreamsim", MetricConfig(dreamsim_cache_dir=str(tmp_path)))
    assert calls == []  # never reached the package's downloading loader


def test_arcface_without_model_pack_never_downloads(monkeypatch, tmp_path):
    calls = []
    insightface = types.ModuleType("insightface")
    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = lambda **kw: calls.append(kw)
    insightface.app = app
    monkeypatch.setitem(sys.modules, "insightface", insightface)
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    with pytest.raises(MetricUnavailable, match="never downloads"):
        build_metric("id_arcface", MetricConfig(insightface_root=str(tmp_path)))
    assert calls == []


def test_lpips_plumbing_with_a_stand_in_package(monkeypatch):
    # a stand-in for the lpips package: checks the pinned settings and the [-1, 1] input range reach it
    seen = {}

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, version, verbose):
            super().__init__()
            seen.update(net=net, version=version)

        def forward(self, a, b):
            seen.update(lo=float(a.min()), hi=float(a.max()))
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    metric = build_metric("lpips")
    pred = torch.zeros(2, 3, 8, 8)
    pred[1] = 1.0
    values = metric(pred, torch.zeros(2, 3, 8, 8)).values
    assert seen == {"net": "alex", "version": "0.1", "lo": -1.0, "hi": 1.0}
    np.testing.assert_allclose(values.numpy(), [0.0, 2.0])  # per sample, in the [-1, 1] range
    assert metric.settings()["input_range"].startswith("[-1, 1]")


def test_dreamsim_plumbing_with_cached_weights(monkeypatch, tmp_path):
    seen = {}

    def fake_dreamsim(pretrained, device, cache_dir):
        seen.update(pretrained=pretrained, cache_dir=cache_dir)

        def model(a, b):
            seen["size"] = tuple(a.shape[-2:])
            # in float64: in float32 the rounding of a 150k-long cosine left 7.2e-7 of the 1e-6 tolerance (1.4x),
            # and that rounding moves with the CPU's SIMD width; float64 leaves 4e-14
            return 1.0 - torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double())

        return model, None

    monkeypatch.setitem(sys.modules, "dreamsim", types.SimpleNamespace(dreamsim=fake_dreamsim))
    for name in metrics.DREAMSIM_ENSEMBLE_FILES:
        (tmp_path / name).touch()
    metric = build_metric("dreamsim", MetricConfig(dreamsim_cache_dir=str(tmp_path)))
    x = torch.rand(3, 3, 64, 64)
    values = metric(x, x).values
    assert seen == {"pretrained": True, "cache_dir": str(tmp_path), "size": (224, 224)}
    np.testing.assert_allclose(values.numpy(), 0.0, atol=1e-6)


# ------------------------------------------------------------------------------------------ dlib identity
@pytest.fixture(scope="module")
def dlib_metric():
    return DlibIdentityMetric()


def test_dlib_identity_same_face_and_no_face(dlib_metric):
    face = data.astronaut()[:320, 60:380]
    same = dlib_metric(face, face)
    assert float(same.values[0]) == pytest.approx(0.0, abs=1e-6)
    flipped = dlib_metric(np.ascontiguousarray(face[:, ::-1]), face)
    assert 0.0 < float(flipped.values[0]) < 0.6  # same person, dlib's threshold
    white = np.full_like(face, 255)
    result = dlib_metric(np.stack([white, face]), np.stack([face, white]))
    assert np.isnan(result.values.numpy()).all()  # counted as not found, never scored as 0
    assert result.faces_not_found == {"pred": 1, "target": 1, "pairs": 2}


def test_dlib_identity_takes_channels_first_tensors(dlib_metric):
    # Renders arrive as [B, 3, H, W] tensors, channels-first in memory (not views of an HxWx3 array).
    face = torch.from_numpy(data.astronaut()[:320, 60:380].copy()).permute(2, 0, 1).contiguous().float() / 255
    result = dlib_metric(face[None], face[None])
    assert float(result.values[0]) == pytest.approx(0.0, abs=1e-6) and result.faces_not_found["pairs"] == 0


def test_dlib_looks_for_faces_in_a_small_copy_and_describes_the_full_image(monkeypatch):
    from PIL import Image

    from perchead.preprocess import identity

    face = np.asarray(Image.fromarray(data.astronaut()[:320, 60:380]).resize((512, 512)))
    sides = []
    detect = identity.detect_faces

    def spy(rgb, *args, **kwargs):
        sides.append(rgb.shape[:2])
        return detect(rgb, *args, **kwargs)

    monkeypatch.setattr(identity, "detect_faces", spy)
    small, full = identity.DlibFaceEncoder(), identity.DlibFaceEncoder(detect_side=None)
    a, b = small.embed(face), full.embed(face)
    assert sides == [(256, 256), (512, 512)]
    # The same face found at either size: the descriptors differ only by where the 5-point alignment starts
    # (0.07 here; a box not scaled back to the full image gives 0.77).
    assert a is not None and b is not None and small.distance(a, b) < 0.2
    wide = np.ascontiguousarray(np.concatenate([face, np.full_like(face, 255)], 1))  # 512 x 1024
    c = small.embed(wide)
    assert sides[-1] == (128, 256) and c is not None and small.distance(b, c) < 0.2  # 0.04 here
    assert "256" in small.settings()["detected_at"] and full.settings()["detected_at"] == "full size"
    # the detector's score, looked for in the same copy: a photo's face scores above the 0.3 that counts as one
    score = small.face_score(face)  # 1.37 here
    half = np.asarray(Image.fromarray(face).resize((256, 256), Image.Resampling.BILINEAR))
    assert score is not None and score > 0.6 and score == pytest.approx(identity.dlib_face_score(half))
    blank = identity.dlib_face_score(np.full((256, 256, 3), 255, np.uint8))
    assert blank is None or blank < 0.0
    with pytest.raises(ValueError, match="detect_side"):
        identity.DlibFaceEncoder(detect_side=16)


def test_dlib_identity_cosine_and_suite_counts():
    face = data.astronaut()[:320, 60:380]
    white = np.full_like(face, 255)
    suite = MetricSuite(["psnr", "id_dlib"], MetricConfig(dlib_distance="cosine"))
    suite.update(np.stack([white, np.ascontiguousarray(face[:, ::-1])]), np.stack([face, face]))
    assert math.isnan(suite.rows[0]["id_dlib"])
    assert 0.0 < suite.rows[1]["id_dlib"] < 0.2
    assert suite.faces_not_found["id_dlib"] == {"pred": 1, "target": 0, "pairs": 1}
    assert "face not found in 1 prediction(s)" in suite.report()
    assert "cosine" in suite.settings()["id_dlib"]["distance"]
    with pytest.raises(ValueError, match="euclidean"):
        DlibIdentityMetric(distance="l1")

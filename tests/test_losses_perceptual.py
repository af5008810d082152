"""The paper's combined loss, the ablation losses and their selection by name."""

import sys

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from perchead.losses import (
    LOSS_NAMES,
    DinoLoss,
    DinoLossConfig,
    L1Loss,
    LossConfig,
    MSELoss,
    PerceptualLoss,
    SamLoss,
    SamLossConfig,
    SharpenLoss,
    SSIMLoss,
    WeightedSum,
    build_loss,
    load_dinov2,
    load_sam2_vision,
    ssim,
)
from perchead.losses.testing import save_tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def nets(tiny):
    return load_dinov2(str(tiny["dinov2"])), load_sam2_vision(str(tiny["sam2"]))


def _small_config():
    return LossConfig(dino=DinoLossConfig(resize=64, crop=56), sam=SamLossConfig(resolution=128))


def test_perceptual_is_weighted_sum_of_dino_and_sam(nets):
    dino_model, sam_encoder = nets
    cfg = _small_config()
    dino, sam = DinoLoss(cfg.dino, dino_model), SamLoss(cfg.sam, sam_encoder)
    pred, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    total, parts = PerceptualLoss(dino, sam, dino_weight=0.5, sam_weight=2.0)(pred, target, return_parts=True)
    assert torch.allclose(parts["dino"], dino(pred, target)) and torch.allclose(
        parts["sam"], sam(pred, target)
    )
    assert torch.allclose(total, 0.5 * parts["dino"] + 2.0 * parts["sam"], atol=1e-6)
    assert {"dino/layer8", "dino/layer11"} <= set(parts)
    x = pred.clone().requires_grad_(True)
    PerceptualLoss(dino, sam)(x, pred).backward()
    assert x.grad is not None  # identical images: loss ~0 but the graph still reaches pred


def test_build_loss_knows_every_name(nets):
    dino_model, sam_encoder = nets
    pred, target = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    expected = {
        "perceptual": PerceptualLoss,
        "dino": DinoLoss,
        "sam": SamLoss,
        "sharpen": SharpenLoss,
        "l1": L1Loss,
        "ssim": SSIMLoss,
        "pixel": WeightedSum,
    }
    for name, cls in expected.items():
        loss = build_loss(name, _small_config(), dino_model=dino_model, sam_encoder=sam_encoder)
        assert isinstance(loss, cls), name
        assert loss(pred, pred.clone()).abs() < 1e-4, name
        assert loss(pred, target) > 0, name
    assert set(expected) | {"lpips"} == set(LOSS_NAMES)
    with pytest.raises(ValueError, match="unknown loss 'vgg'.*perceptual"):
        build_loss("vgg")


def test_lpips_without_its_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError, whatever is installed
    with pytest.raises(RuntimeError, match="pip install lpips torchvision"):
        build_loss("lpips")


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    a = rng.random((48, 40, 3)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    expected = structural_similarity(
        a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    to_t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    got = ssim(to_t(a), to_t(b))
    assert abs(got.item() - expected) < 1e-5
    assert abs(ssim(to_t(a), to_t(a)).item() - 1.0) < 1e-5
    ssim_map = ssim(to_t(a), to_t(b), return_map=True)
    assert ssim_map.shape == (1, 3, 48 - 10, 40 - 10)
    assert torch.allclose(ssim_map.mean(), got[0])


def test_pixel_losses_values_and_gradients():
    pred = torch.rand(2, 3, 32, 32, requires_grad=True)
    target = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert torch.allclose(L1Loss()(pred, target), (pred - target).abs().mean())
    assert torch.allclose(MSELoss()(pred, target), (pred - target).square().mean())
    per_sample = MSELoss().per_sample(pred, target)
    psnr = -10 * torch.log10((pred - target).square().flatten(1).mean(1))
    assert torch.allclose(-10 * torch.log10(per_sample), psnr)  # lower MSE loss <=> higher PSNR, per image
    cfg = LossConfig(l1_weight=0.0, ssim_weight=0.3, mse_weight=1.0)
    loss, parts = build_loss("pixel", cfg)(pred, target, return_parts=True)
    assert set(parts) == {"ssim", "mse"}  # a zero-weight term is not computed
    assert torch.allclose(loss, parts["mse"] + 0.3 * parts["ssim"])
    assert torch.allclose(parts["mse"], MSELoss()(pred, target))
    with pytest.raises(ValueError, match="at least one > 0"):
        build_loss("pixel", LossConfig(l1_weight=0.0, ssim_weight=0.0))
    with pytest.raises(ValueError, match="weights >= 0"):
        build_loss("pixel", LossConfig(mse_weight=-1.0))
    loss, parts = build_loss("pixel")(pred, target, return_parts=True)
    assert torch.allclose(loss, 0.8 * parts["l1"] + 0.2 * parts["ssim"])
    loss.backward()
    assert pred.grad.abs().sum() > 0 and target.grad is None
    with pytest.raises(ValueError, match="at least 11x11"):
        SSIMLoss()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))

"""SamLoss against transformers' own SAM 2 image embedding (lowest level + no-memory embedding)."""

import pytest
import torch
import torch.nn.functional as F

from perchead.losses import SamLoss, SamLossConfig, load_sam2_vision
from perchead.losses.testing import save_tiny_models

RES = 128  # the tiny encoder's native size; the real one uses 1024


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def sam(tiny):
    return load_sam2_vision(str(tiny["sam2"]))


def _config(**kw):
    return SamLossConfig(resolution=RES, **kw)


def test_features_equal_sam2_image_embeddings(tiny, sam):
    from transformers import Sam2Model

    full = Sam2Model.from_pretrained(tiny["sam2"]).eval()
    images = torch.rand(2, 3, 96, 96)
    pixels = F.interpolate(images, size=(RES, RES), mode="bilinear", align_corners=False, antialias=True)
    pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    expected = full.get_image_embeddings(pixels)[-1]  # lowest resolution, no-memory embedding added
    got = SamLoss(_config(), sam).features(images)
    assert got.shape == (2, 32, RES // 16, RES // 16)
    assert torch.allclose(got, expected, atol=1e-5)
    without = SamLoss(_config(add_no_memory_embedding=False), sam).features(images)
    assert not torch.allclose(without, expected, atol=1e-3)


def test_loss_is_one_minus_cosine_per_location(sam):
    loss = SamLoss(_config(), sam)
    pred, target = torch.rand(2, 3, RES, RES), torch.rand(2, 3, RES, RES)
    a, b = loss.features(pred), loss.features(target)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert torch.allclose(loss(pred, target), (1 - cos).mean(), atol=1e-6)


def test_zero_for_identical_positive_otherwise(sam):
    loss = SamLoss(_config(), sam)
    x = torch.rand(2, 3, RES, RES)
    assert loss(x, x.clone()).abs() < 1e-5
    assert loss(x, torch.rand(2, 3, RES, RES)) > 1e-5


def test_gradients_reach_pred_only(sam):
    loss = SamLoss(_config(), sam)
    pred = torch.rand(2, 3, 64, 64, requires_grad=True)
    target = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_batch_composition_does_not_change_a_sample(sam):
    loss = SamLoss(_config(), sam)
    pred, target = torch.rand(3, 3, RES, RES), torch.rand(3, 3, RES, RES)
    batched = loss.per_sample(pred, target)
    alone = torch.stack([loss.per_sample(pred[i : i + 1], target[i : i + 1])[0] for i in range(3)])
    assert torch.allclose(batched, alone, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradient(sam):
    pred, target = torch.rand(2, 3, RES, RES), torch.rand(2, 3, RES, RES)
    grads = []
    for ckpt in (False, True):
        p = pred.clone().requires_grad_(True)
        SamLoss(_config(gradient_checkpointing=ckpt), sam)(p, target).backward()
        grads.append(p.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_vision_only_checkpoint_needs_the_no_memory_embedding_switched_off(tiny):
    encoder = load_sam2_vision(str(tiny["sam2_vision"]))
    with pytest.raises(ValueError, match="no-memory"):
        SamLoss(_config(), encoder)
    x = torch.rand(1, 3, RES, RES)
    assert SamLoss(_config(add_no_memory_embedding=False), encoder)(x, x).abs() < 1e-5


def test_bad_resolution_is_refused(sam):
    with pytest.raises(ValueError, match="multiple of 32"):
        SamLoss(SamLossConfig(resolution=100), sam)


def test_for_render():
    assert SamLossConfig.for_render(512).resolution == 1024
    assert SamLossConfig.for_render(128).resolution == 256

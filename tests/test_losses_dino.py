"""DinoLoss and SharpenLoss against an independent computation from transformers' hidden states."""

import pytest
import torch
import torch.nn.functional as F

from perchead.losses import DinoLoss, DinoLossConfig, SharpenLoss, load_dinov2, sharpen_loss_config
from perchead.losses.dino import dino_preprocess
from perchead.losses.testing import save_tiny_models

SMALL = DinoLossConfig(resize=64, crop=56)  # 4x4 patches: fast, same code path as 512 -> 504


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def dino(tiny):
    return load_dinov2(str(tiny["dinov2"]))


def _reference_preprocess(x, resize=512, crop=504):
    """torchvision Resize(resize, BICUBIC) on a square tensor, centre crop, ImageNet mean/std."""
    if x.shape[-1] != resize:
        x = F.interpolate(x, size=(resize, resize), mode="bicubic", align_corners=False, antialias=True)
    off = (resize - crop) // 2
    x = x[:, :, off : off + crop, off : off + crop]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _reference_loss(model, pred, target, layers, tokens="cls+patch", registers=0, resize=512, crop=504):
    """Written from the paper / dino-loss settings, without perchead's helpers."""
    with torch.no_grad():
        hp = model(
            pixel_values=_reference_preprocess(pred, resize, crop), output_hidden_states=True
        ).hidden_states
        ht = model(
            pixel_values=_reference_preprocess(target, resize, crop), output_hidden_states=True
        ).hidden_states
    losses = []
    for k in layers:
        a, b = hp[k], ht[k]
        keep = [0] if tokens == "cls" else [0, *range(1 + registers, a.shape[1])]
        a, b = a[:, keep], b[:, keep]
        cos = (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)
        losses.append((1 - cos).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("size", [256, 512, 600])  # upsampled, unchanged, (antialiased) downsampled
def test_preprocessing_is_the_papers(size):
    x = torch.rand(1, 3, size, size)
    got = dino_preprocess(x, 512, 504)
    assert got.shape == (1, 3, 504, 504)
    assert torch.allclose(got, _reference_preprocess(x), atol=1e-5)


def test_matches_independent_computation_at_paper_settings(dino):
    pred, target = torch.rand(1, 3, 600, 600), torch.rand(1, 3, 600, 600)
    loss = DinoLoss(DinoLossConfig(), dino)  # paper defaults: layers 8, 11; 512 -> 504
    expected = _reference_loss(dino, pred, target, (8, 11))
    assert torch.allclose(loss(pred, target), expected, atol=1e-5)


def test_registers_are_excluded_and_layer_indexing_is_hidden_states(tiny):
    model = load_dinov2(str(tiny["dinov2_reg"]))
    pred, target = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    loss = DinoLoss(DinoLossConfig(layers=(0, 5, 12), resize=64, crop=56), model)
    expected = _reference_loss(model, pred, target, (0, 5, 12), registers=4, resize=64, crop=56)
    assert torch.allclose(loss(pred, target), expected, atol=1e-5)


def test_sharpen_loss_is_layer8_cls_only(dino):
    pred, target = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    expected = _reference_loss(dino, pred, target, (8,), tokens="cls", resize=64, crop=56)
    loss = SharpenLoss(sharpen_loss_config(resize=64, crop=56), dino)
    assert loss.config.layers == (8,) and loss.config.tokens == "cls"
    assert torch.allclose(loss(pred, target), expected, atol=1e-5)


def test_zero_for_identical_positive_otherwise(dino):
    loss = DinoLoss(SMALL, dino)
    x = torch.rand(3, 3, 56, 56)
    assert loss(x, x.clone()).abs() < 1e-5
    assert loss(x, torch.rand(3, 3, 56, 56)) > 1e-3
    total, parts = loss(x, torch.rand(3, 3, 56, 56), return_parts=True)
    assert set(parts) == {"layer8", "layer11"}
    assert torch.allclose(total, (parts["layer8"] + parts["layer11"]) / 2)


def test_gradients_reach_pred_only(dino):
    loss = DinoLoss(SMALL, dino)
    pred = torch.rand(2, 3, 56, 56, requires_grad=True)
    target = torch.rand(2, 3, 56, 56, requires_grad=True)
    loss(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_batch_composition_does_not_change_a_sample(dino):
    loss = DinoLoss(SMALL, dino)
    pred, target = torch.rand(4, 3, 56, 56), torch.rand(4, 3, 56, 56)
    batched = loss.per_sample(pred, target)
    alone = torch.stack([loss.per_sample(pred[i : i + 1], target[i : i + 1])[0] for i in range(4)])
    assert torch.allclose(batched, alone, atol=1e-6)
    assert torch.allclose(loss(pred, target), batched.mean())


def test_gradient_checkpointing_gives_the_same_loss_and_gradient(dino):
    pred, target = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    grads = []
    for ckpt in (False, True):
        cfg = DinoLossConfig(resize=64, crop=56, gradient_checkpointing=ckpt)
        p = pred.clone().requires_grad_(True)
        DinoLoss(cfg, dino)(p, target).backward()
        grads.append(p.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_train_mode_keeps_the_frozen_net_in_eval(dino):
    loss = DinoLoss(SMALL, dino).train()
    assert loss.training and not loss.model.training


def test_bad_settings_and_inputs_are_refused(dino):
    with pytest.raises(ValueError, match="hidden states 0..12"):
        DinoLoss(DinoLossConfig(layers=(13,)), dino)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DinoLoss(DinoLossConfig(resize=64, crop=60), dino)
    loss = DinoLoss(SMALL, dino)
    with pytest.raises(ValueError, match="shapes differ"):
        loss(torch.rand(1, 3, 56, 56), torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        loss(torch.rand(1, 56, 56, 3), torch.rand(1, 56, 56, 3))


def test_for_render_keeps_paper_settings_at_512_and_lowers_them_for_small_renders():
    assert (DinoLossConfig.for_render(512).resize, DinoLossConfig.for_render(512).crop) == (512, 504)
    small = DinoLossConfig.for_render(128)
    assert (small.resize, small.crop) == (256, 252)

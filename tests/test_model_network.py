"""The PercHead network on CPU: shapes, no self-attention, foreground filter, offset bound, DINOv2 branch."""

from __future__ import annotations

import pytest
import torch

from perchead.geometry import Gaussians
from perchead.model import Decoder, GaussianHeads, HeadTemplate, PercHead, ShpCnn, load_dinov2, preset
from perchead.model.encoder import DinoBranch


def _sphere_template(resolution: int) -> HeadTemplate:
    """A cheap stand-in surface (UV sphere of radius 0.1 m) for tests that only need shapes."""
    v, u = torch.meshgrid(torch.linspace(0.05, 3.09, resolution), torch.linspace(0, 6.28, resolution),
                          indexing="ij")
    normals = torch.stack([torch.sin(v) * torch.cos(u), torch.cos(v), torch.sin(v) * torch.sin(u)], -1)
    return HeadTemplate(0.1 * normals, normals, torch.zeros(resolution, resolution, dtype=torch.long))


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                    patch_size=14, image_size=56, num_register_tokens=4)
    path = tmp_path_factory.mktemp("tiny_dinov2")
    Dinov2WithRegistersModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(tiny_dino_dir):
    torch.manual_seed(0)
    cfg = preset("tiny", dino=str(tiny_dino_dir), dino_layers=(1, 3))
    return PercHead(cfg, template=_sphere_template(64)).eval()


def _inputs(batch: int = 2, size: int = 128):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, size, size, generator=g)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 30:100, 40:90] = 1.0
    return image, mask


def test_output_shapes_and_initial_values(model):
    image, mask = _inputs()
    with torch.no_grad():
        g = model(image, mask)
    assert isinstance(g, Gaussians)
    assert g.means.shape == (2, 4096, 3) and g.quats.shape == (2, 4096, 4) and g.sh.shape == (2, 4096, 1, 3)
    g.check_finite()
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(2, 4096))
    # Heads start near their configured biases: opacity ~0.1, identity rotation.
    assert abs(float(g.opacities.mean()) - 0.1) < 0.02
    assert float(g.rotations[..., 0].mean()) > 0.95
    assert g.scales.min() >= model.config.scale_min and g.scales.max() <= model.config.scale_max


def test_paper_decoder_gives_65536_gaussians():
    cfg = preset("paper")
    template = _sphere_template(256)
    # Full 10-layer paper decoder on the meta device: shapes without the ~900 GFLOP.
    with torch.device("meta"):
        decoder = Decoder(cfg)
        heads = GaussianHeads(cfg, template)
        f2d = torch.randn(1, 1000, cfg.f2d_width)
        valid = torch.ones(1, 1000, dtype=torch.bool)
    meta_template = _sphere_template(256).to("meta")  # Module.to moves in place: keep `template` real
    g = heads(decoder(f2d, valid, decoder.embed(meta_template)), meta_template)
    assert g.means.shape == (1, 65536, 3) and g.opacity_logits.shape == (1, 65536)
    assert decoder.embed(meta_template).shape == (4096, 1024)
    # And a real computation at paper width (one layer to keep it fast).
    cfg1 = cfg.replace(layers=1)
    decoder, heads = Decoder(cfg1), GaussianHeads(cfg1, template)
    f2d = torch.randn(2, 50, cfg.f2d_width)
    valid = torch.ones(2, 50, dtype=torch.bool)
    valid[1, 30:] = False
    with torch.no_grad():
        g = heads(decoder(f2d, valid, decoder.embed(template)), template)
    assert g.means.shape == (2, 65536, 3)
    g.check_finite()


def test_no_self_attention_one_token_changes_only_its_16_gaussians(model):
    image, mask = _inputs(batch=1)
    with torch.no_grad():
        tokens2d = model.encode(image, mask)
        init = model.initial_tokens()
        base = model.decode(tokens2d, init)
        k = 37
        changed = init.clone()
        changed[k] += torch.randn(init.shape[1])
        out = model.decode(tokens2d, changed)
    owner = model.template.token_of_point()
    assert int((owner == k).sum()) == 16
    for name, a in base.tensors().items():
        b = out.tensors()[name]
        diff = (a - b).abs().reshape(1, 4096, -1).amax(dim=(0, 2))
        assert float(diff[owner != k].max()) < 1e-6, name
    moved = (base.means - out.means).norm(dim=-1)[0]
    assert bool((moved[owner == k] > 0).all())


def test_token_of_point_matches_pixel_shuffle_layout(model):
    # The 16 Gaussians of token (i, j) are the 4x4 texel block at rows 4i.., cols 4j.. of the 64x64 grid.
    owner = model.template.token_of_point().reshape(64, 64)
    assert torch.equal(owner[8:12, 20:24], torch.full((4, 4), 2 * 16 + 5))


def test_background_patches_change_nothing(model):
    image, mask = _inputs(batch=1)
    other = image.clone()
    # The input is padded by 6 px (128 -> 140 = 10 patches of 14). The mask covers rows 30..99, cols 40..89,
    # so input rows < 22 and cols < 22 lie in patches without a foreground pixel: change them all.
    other[:, :, :22, :] = torch.rand(1, 3, 22, 128)
    other[:, :, :, :36] = 0.0
    other[:, :, 106:, :] = torch.rand(1, 3, 22, 128)
    with torch.no_grad():
        a, b = model(image, mask), model(other, mask)
        tokens = model.encode(image, mask)
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]), name
    # Only foreground patches reach the decoder: padded rows 36..105 -> patch rows 2..7, cols 46..95 -> 3..6.
    assert tokens.tokens.shape[1] == 6 * 4 and bool(tokens.valid.all())
    expected = sorted(r * 10 + c for r in range(2, 8) for c in range(3, 7))
    assert sorted(tokens.patch_index[0].tolist()) == expected
    # ...and changing a foreground pixel does change the output.
    other[:, :, 60, 60] = 1.0 - other[:, :, 60, 60]
    with torch.no_grad():
        c = model(other, mask)
    assert not torch.equal(a.means, c.means)


def test_batches_with_different_foreground_counts(model):
    image, mask = _inputs(batch=2)
    mask[1] = 0.0
    mask[1, :, 50:70, 50:70] = 1.0
    with torch.no_grad():
        batched = model(image, mask)
        alone = [model(image[i:i + 1], mask[i:i + 1]) for i in range(2)]
        tokens = model.encode(image, mask)
    assert tokens.valid.sum(1).tolist() == [24, 4]
    for i in range(2):
        assert torch.allclose(batched.means[i], alone[i].means[0], atol=1e-6)
        assert torch.allclose(batched.sh[i], alone[i].sh[0], atol=1e-6)


def test_positions_stay_within_s_max_of_their_anchor(model):
    image, mask = _inputs(batch=1)
    heads = model.heads
    saved = heads.out.weight.detach().clone()
    try:
        with torch.no_grad():
            heads.out.weight.mul_(1e4)  # saturate tanh
            g = model(image, mask)
    finally:
        with torch.no_grad():
            heads.out.weight.copy_(saved)
    s_max = float(heads.s_max_m)
    assert abs(s_max - 0.05 * model.template.head_size()) < 1e-7
    anchors, _ = model.template.points()
    offset = (g.means[0] - anchors).abs()
    assert float(offset.max()) <= s_max * (1 + 1e-5)
    assert float(offset.max()) > 0.9 * s_max  # saturated: the bound is reached, not just met trivially


def test_dino_branch_uses_the_requested_blocks(model, tiny_dino_dir):
    dino = model.encoder.dino
    assert isinstance(dino, DinoBranch) and dino.layers == (1, 3) and dino.skip == 5
    captured = {}
    hooks = [dino.model.encoder.layer[i].register_forward_hook(
        lambda _m, _i, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i in (1, 3)]
    pixels = torch.randn(1, 3, 140, 140)
    try:
        feats = dino(pixels)
    finally:
        for h in hooks:
            h.remove()
    assert feats.shape == (1, 100, 64)
    expected = torch.cat([dino.model.layernorm(captured[i])[:, 5:] for i in (1, 3)], dim=-1)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert not any(p.requires_grad for p in dino.parameters())
    model.train()
    assert not dino.training and model.encoder.vit.training
    model.eval()


def test_missing_dinov2_weights_is_a_clear_error(tmp_path, tiny_dino_dir):
    (tmp_path / "config.json").write_text((tiny_dino_dir / "config.json").read_text())
    with pytest.raises(RuntimeError, match="cannot load DINOv2 weights"):
        load_dinov2(str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot load DINOv2 weights"):
        PercHead(preset("tiny", dino=str(tmp_path / "nowhere"), dino_layers=(1,)),
                 template=_sphere_template(64))
    with pytest.raises(ValueError, match="out of range"):
        PercHead(preset("tiny", dino=str(tiny_dino_dir), dino_layers=(4,)), template=_sphere_template(64))


def test_bad_inputs_are_clear_errors(model):
    image, mask = _inputs(batch=1)
    with pytest.raises(ValueError, match=r"\[B, 3, 128, 128\]"):
        model(image[:, :, :100], mask)
    with pytest.raises(ValueError, match="no foreground"):
        model(image, torch.zeros_like(mask))


def test_gradients_reach_trainable_parts_only(model):
    image, mask = _inputs(batch=1)
    model.zero_grad()
    g = model(image, mask)
    (g.means.sum() + g.sh.sum() + g.opacity_logits.sum()).backward()
    assert model.encoder.vit.patch_embed.weight.grad is not None
    assert model.decoder.embed.proj.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.dino.parameters())
    model.zero_grad()


def test_shp_cnn_starts_as_identity_and_can_be_switched_off():
    cnn = ShpCnn(8, 2)
    rgb = torch.rand(2, 3, 16, 16)
    assert torch.equal(cnn(rgb), rgb)
    torch.nn.init.normal_(cnn.tail.weight, std=0.1)
    assert not torch.allclose(cnn(rgb), rgb)
    off = PercHead(preset("tiny", shp_cnn=False), template=_sphere_template(64))
    assert off.shp_cnn is None and torch.equal(off.sharpen(rgb), rgb)

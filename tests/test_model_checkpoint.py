"""Checkpoints: safetensors + config.json round trip, and clear errors for bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from perchead.cli import main as cli_main
from perchead.model import HeadTemplate, PercHead, preset


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                       image_size=56)
    path = tmp_path_factory.mktemp("tiny_dinov2_plain")
    Dinov2Model(cfg).save_pretrained(path)
    return path


def _template(resolution: int = 64) -> HeadTemplate:
    g = torch.Generator().manual_seed(3)
    xyz = 0.1 * torch.randn(resolution, resolution, 3, generator=g)
    return HeadTemplate(xyz, torch.nn.functional.normalize(xyz, dim=-1),
                        torch.randint(0, 4, (resolution, resolution), generator=g))


@pytest.fixture(scope="module")
def saved(tiny_dino_dir, tmp_path_factory):
    torch.manual_seed(0)
    model = PercHead(preset("tiny", dino=str(tiny_dino_dir), dino_layers=(0, 2)), template=_template()).eval()
    # Make every head non-trivial so a wrong load could not go unnoticed.
    with torch.no_grad():
        for p in model.shp_cnn.tail.parameters():
            p.normal_(std=0.05)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path)
    return model, path


def _inputs():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 128, 128, generator=g)
    mask = torch.zeros(1, 1, 128, 128)
    mask[:, :, 20:110, 30:100] = 1
    return image, mask


def test_save_load_gives_identical_outputs(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    tensors = load_file(path / "model.safetensors")
    assert not any(k.startswith("encoder.dino.") for k in tensors)  # frozen DINOv2 is not stored
    assert "template.xyz" in tensors and "heads.s_max_m" in tensors  # the template is
    loaded = PercHead.from_pretrained(path).eval()
    assert torch.equal(loaded.template.xyz, model.template.xyz)
    image, mask = _inputs()
    with torch.no_grad():
        a, b = model(image, mask), loaded(image, mask)
        rgb = torch.rand(1, 3, 32, 32)
        assert torch.equal(model.sharpen(rgb), loaded.sharpen(rgb))
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]), name


def test_dino_override_on_load(saved, tmp_path):
    _, path = saved
    with pytest.raises(RuntimeError, match="cannot load DINOv2 weights"):
        PercHead.from_pretrained(path, dino=str(tmp_path / "no_dino_here"))


def test_checkpoint_of_another_preset_names_the_tensor(saved, tmp_path):
    _, path = saved
    other = tmp_path / "small"
    other.mkdir()
    cfg = preset("small", dino=None, dino_layers=())
    (other / "config.json").write_text(json.dumps({"format": "perchead-model", "format_version": 1,
                                                   **cfg.to_dict()}))
    (other / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(ValueError) as err:
        PercHead.from_pretrained(other)
    msg = str(err.value)
    assert "preset 'tiny'" in msg and "'small' model" in msg and "shape" in msg
    assert "(64, 64, 3)" in msg or "(128, 128, 3)" in msg or "(256," in msg or "(128," in msg


def test_truncated_weights_file(saved, tmp_path):
    _, path = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        PercHead.from_pretrained(broken)


def test_missing_weights_file_and_missing_tensor(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        PercHead.from_pretrained(tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["decoder.layers.2.mlp.0.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "perchead-model",
                                                                       "preset": "tiny"})
    with pytest.raises(ValueError, match=r"1 missing tensor\(s\) \['decoder.layers.2.mlp.0.weight'\]"):
        PercHead.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        PercHead.from_pretrained(tmp_path / "does_not_exist")


def test_hub_id_that_is_not_available_offline():
    # conftest sets HF_HUB_OFFLINE: a hub id that is not in the local cache must fail clearly, not hang.
    with pytest.raises(FileNotFoundError, match="cannot get config.json of checkpoint 'nobody/no-such-model'"):
        PercHead.from_pretrained("nobody/no-such-model")


def test_non_strict_load_keeps_matching_tensors(saved):
    model, path = saved
    fresh = PercHead(preset("tiny", dino=model.config.dino, dino_layers=(0, 2), shp_cnn=False),
                     template=_template())
    with pytest.raises(ValueError, match="unexpected"):
        fresh.load_weights(path / "model.safetensors")
    fresh.load_weights(path / "model.safetensors", strict=False)
    assert torch.equal(fresh.decoder.layers[1].mlp[0].weight, model.decoder.layers[1].mlp[0].weight)


def test_save_is_atomic_and_leaves_no_temp_files(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_model_info_cli(capsys, tiny_dino_dir):
    assert cli_main(["model-info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "Gaussians per head: 4,096 (256 tokens x 16)" in out and "DINOv2 branch: off" in out
    assert cli_main(["model-info", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "65,536" in out and "facebook/dinov2-with-registers-giant" in out
    frozen = int(next(line for line in out.splitlines() if line.startswith("DINOv2 (frozen)"))
                 .split()[-1].replace(",", ""))
    assert 1.0e9 < frozen < 1.2e9  # ViT-g/14 has ~1.1 B parameters
    args = ["model-info", "--preset", "small", "--dino", str(tiny_dino_dir)]
    assert cli_main(args) == 1  # the preset's blocks 2,5,8,11 do not exist in a 3-block DINOv2
    assert "out of range" in capsys.readouterr().err
    assert cli_main([*args, "--dino-layers", "0", "2"]) == 0
    out = capsys.readouterr().out
    n_tiny = sum(p.numel() for p in __import__("transformers").Dinov2Model.from_pretrained(tiny_dino_dir)
                 .parameters())
    assert f"{n_tiny:,}" in out
    assert cli_main(["model-info", "--preset", "small", "--dino", "/no/such/folder"]) == 1

"""Loading frozen foundation models by folder or hub id, and the errors when they are absent or wrong."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from perchead.losses import (
    FoundationModelError,
    WeightsNotFoundError,
    WrongModelTypeError,
    load_clip,
    load_dinov2,
    load_sam2_vision,
)
from perchead.losses.testing import save_tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def _assert_frozen(module):
    assert not module.training
    params = list(module.parameters())
    assert params and all(not p.requires_grad for p in params)


def test_loaders_return_frozen_models_with_the_saved_weights(tiny):
    from transformers import Dinov2Model, Sam2Model

    dino = load_dinov2(str(tiny["dinov2"]))
    _assert_frozen(dino)
    reference = Dinov2Model.from_pretrained(tiny["dinov2"])
    for (name, a), (_, b) in zip(dino.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    sam = load_sam2_vision(str(tiny["sam2"]))
    _assert_frozen(sam)
    full = Sam2Model.from_pretrained(tiny["sam2"])
    assert torch.equal(sam.no_memory_embedding, full.no_memory_embedding.reshape(-1))
    assert sam.no_memory_embedding.abs().sum() > 0
    w = "backbone.blocks.0.attn.qkv.weight"
    assert torch.equal(sam.vision_encoder.state_dict()[w], full.vision_encoder.state_dict()[w])

    clip = load_clip(str(tiny["clip"]))
    _assert_frozen(clip.model)
    assert clip.tokenizer("a hat")["input_ids"][0] == clip.tokenizer.bos_token_id


def test_registers_and_vision_only_checkpoints_load(tiny):
    from transformers import Dinov2WithRegistersModel

    assert isinstance(load_dinov2(str(tiny["dinov2_reg"])), Dinov2WithRegistersModel)
    vision_only = load_sam2_vision(str(tiny["sam2_vision"]))
    assert vision_only.no_memory_embedding is None


@pytest.mark.parametrize(
    ("loader", "folder", "found"),
    [(load_dinov2, "sam2", "sam2"), (load_sam2_vision, "dinov2", "dinov2"), (load_clip, "dinov2", "dinov2")],
)
def test_wrong_model_type_is_refused(tiny, loader, folder, found):
    with pytest.raises(WrongModelTypeError, match=f"holds a '{found}' model"):
        loader(str(tiny[folder]))


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_real_model"}))
    with pytest.raises(WrongModelTypeError, match="cannot read the config"):
        load_dinov2(str(tmp_path))


def test_missing_folder_and_missing_weights_give_the_clear_error(tiny, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_dinov2(str(tmp_path / "nowhere"))
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny["dinov2"] / "config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download"):
        load_dinov2(str(config_only))


def test_checkpoint_lacking_weights_is_refused_not_randomly_filled(tiny, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny["dinov2"] / "config.json").read_text())
    weights = load_file(tiny["dinov2"] / "model.safetensors")
    dropped = next(k for k in weights if "layer.3." in k)
    del weights[dropped]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsNotFoundError, match="refusing to use randomly initialised"):
        load_dinov2(str(partial))


def test_errors_are_runtime_errors_for_the_cli():
    assert issubclass(WeightsNotFoundError, FoundationModelError)
    assert issubclass(WrongModelTypeError, FoundationModelError)
    assert issubclass(FoundationModelError, RuntimeError)


def test_offline_hub_id_with_empty_cache_names_the_model_and_the_fix(tmp_path):
    # A fresh interpreter, so huggingface_hub reads HF_HOME / HF_HUB_OFFLINE from this environment.
    script = textwrap.dedent(
        """
        import json
        from perchead.losses import WeightsNotFoundError, load_clip, load_dinov2, load_sam2_vision
        out = {}
        cases = (
            (load_dinov2, "facebook/dinov2-small"),
            (load_sam2_vision, "facebook/sam2.1-hiera-small"),
            (load_clip, "openai/clip-vit-base-patch32"),
        )
        for loader, name in cases:
            try:
                loader(name)
                out[name] = "loaded"
            except WeightsNotFoundError as exc:
                out[name] = str(exc)
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    for name, message in messages.items():
        assert message != "loaded"
        assert name in message
        assert f"huggingface-cli download {name}" in message
        assert "offline" in message

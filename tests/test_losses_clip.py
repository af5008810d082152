"""CLIP image and text embeddings share one projection space and one model."""

import pytest
import torch

from perchead.losses import clip_image_embedding, clip_text_embedding, load_clip
from perchead.losses.clip import clip_preprocess
from perchead.losses.testing import save_tiny_models


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    return load_clip(str(save_tiny_models(tmp_path_factory.mktemp("tiny_models"))["clip"]))


def test_image_and_text_embeddings_are_normalised_in_the_same_space(clip):
    images = torch.rand(2, 3, 40, 48)
    img = clip_image_embedding(clip, images)
    txt = clip_text_embedding(clip, ["a person with red hair", "glasses"])
    dim = clip.model.config.projection_dim
    assert img.shape == (2, dim) and txt.shape == (2, dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert clip_text_embedding(clip, "glasses").shape == (1, dim)


def test_embeddings_are_clipmodel_own_projections(clip):
    # CLIPModel.forward returns both embeddings after its projections: the helpers must agree with it.
    images = torch.rand(2, 3, 32, 32)
    texts = ["a hat", "blond curly hair"]
    tokens = clip.tokenizer(texts, padding=True, return_tensors="pt")
    out = clip.model(
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        pixel_values=clip_preprocess(images, 32),
    )
    assert torch.allclose(clip_image_embedding(clip, images), out.image_embeds, atol=1e-5)
    assert torch.allclose(clip_text_embedding(clip, texts), out.text_embeds, atol=1e-5)


def test_image_embedding_is_differentiable_and_input_checked(clip):
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    clip_image_embedding(clip, images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        clip_image_embedding(clip, torch.rand(32, 32, 3))
    with pytest.raises(ValueError, match="non-empty"):
        clip_text_embedding(clip, [])

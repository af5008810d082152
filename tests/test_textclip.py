"""The caption-trained CLIP stand-in (perchead.textclip): captions, tokenizer, vocabulary check, loss, and the
files shipped with the editing demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perchead.data.synth import _HAIR_PALETTE, random_appearance
from perchead.edit.network import DEMO_EDIT_CHECKPOINT
from perchead.losses import clip_image_embedding, clip_text_embedding, load_clip
from perchead.textclip import (
    TextClipConfig,
    UnknownWordsError,
    attributes_from_appearance,
    build_text_clip,
    build_tokenizer,
    caption_fits,
    caption_vocabulary,
    prompt_words,
    sample_caption,
)
from perchead.textclip.captions import HAIR_COLOURS, HeadAttributes
from perchead.textclip.train import contrastive_loss, embed_images, embed_texts

SHIPPED = DEMO_EDIT_CHECKPOINT / "clip_synthetic_captions"


def test_hair_colour_names_recover_the_palette_entry():
    # The generator scales a palette entry by U(0.8, 1.2) (plus noise): both ends must name the same colour.
    base = dict(skin=(0.8, 0.6, 0.5), iris=(0.3, 0.45, 0.65), bald=False, hair_length=0.0, bun=False, glasses=False,
                earrings=False, necklace=False, collar=False)
    for i, entry in enumerate(_HAIR_PALETTE):
        for scale in (0.8, 1.0, 1.2):
            a = attributes_from_appearance({**base, "hair": tuple(np.clip(entry * scale, 0, 1))})
            assert a.hair_colour == HAIR_COLOURS[i], (i, scale)
    bald = attributes_from_appearance({**base, "hair": (0.1, 0.1, 0.1), "bald": True})
    assert bald.hair_colour is None and bald.length is None and bald.bald


def test_captions_are_true_and_use_only_the_vocabulary():
    rng = np.random.default_rng(0)
    vocabulary = set(caption_vocabulary())
    from dataclasses import asdict

    for _ in range(200):
        a = attributes_from_appearance(asdict(random_appearance(rng)))
        text, claims = sample_caption(a, rng)
        assert caption_fits(claims, a), text
        assert set(prompt_words(text)) <= vocabulary, text
    red = HeadAttributes("red", False, "long", False, True, False, False, False, "light", "blue")
    black = HeadAttributes("black", False, "long", False, True, False, False, False, "light", "blue")
    assert caption_fits((("hair_colour", "red"), ("glasses", True)), red)
    assert not caption_fits((("hair_colour", "red"),), black)


def test_tokenizer_makes_every_caption_word_one_token():
    words = caption_vocabulary()
    tok = build_tokenizer(words)
    for w in words:
        assert len(tok(w, add_special_tokens=False)["input_ids"]) == 1, w
    # an unknown word still encodes (as characters): the vocabulary check, not the tokenizer, refuses it
    assert len(tok("curly", add_special_tokens=False)["input_ids"]) > 1
    assert build_tokenizer(words).get_vocab() == tok.get_vocab()  # deterministic


def _tiny(words):
    return build_text_clip(words, TextClipConfig(hidden=32, layers=1, heads=2, image_size=16, patch=8,
                                                 projection_dim=16, max_text_tokens=8))


def test_unknown_words_get_a_clear_message_and_real_clips_are_open(tmp_path):
    from perchead.losses.testing import save_tiny_models
    from perchead.textclip import save_text_clip

    model, tok = _tiny(["red", "blue", "hair"])
    save_text_clip(model, tok, tmp_path / "standin")
    clip = load_clip(str(tmp_path / "standin"))
    assert clip_text_embedding(clip, "Red hair").shape == (1, 16)
    with pytest.raises(UnknownWordsError) as err:
        clip_text_embedding(clip, ["red hair", "a curly wig"])
    message = str(err.value)
    assert "'curly'" in message and "'wig'" in message and "'a'" in message
    assert "blue hair red" in message  # the words it knows, listed
    with pytest.raises(UnknownWordsError, match="without words"):
        clip_text_embedding(clip, "!!")
    real = load_clip(str(save_tiny_models(tmp_path / "tiny")["clip"]))  # no vocabulary: any text
    assert clip_text_embedding(real, "a curly wig").shape[0] == 1


def test_a_few_steps_separate_two_captions():
    # Two "heads" (a red and a blue image) and their captions; CLIP's loss for 40 steps. Measured: the
    # matching cosine beats the other by ~0.9 after 40 steps (random init: ~0.0); bound 0.3.
    torch.manual_seed(0)
    model, tok = _tiny(["red", "blue", "hair"])
    images = torch.zeros(2, 3, 16, 16)
    images[0, 0] = 2.0
    images[1, 2] = 2.0
    texts = ["red hair", "blue hair"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss, _ = contrastive_loss(embed_images(model, images), embed_texts(model, tok, texts), torch.eye(2),
                                   model.logit_scale, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        sim = embed_images(model, images) @ embed_texts(model, tok, texts).T
    assert sim[0, 0] - sim[0, 1] > 0.3 and sim[1, 1] - sim[1, 0] > 0.3, sim


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="the stand-in is not bundled")
def test_shipped_standin_loads_offline_and_the_demo_uses_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip(str(SHIPPED))
    size = clip.model.config.vision_config.image_size
    image = clip_image_embedding(clip, torch.rand(1, 3, size, size))
    text = clip_text_embedding(clip, ["red hair", "long blonde hair and glasses"])
    assert image.shape == (1, 64) and text.shape == (2, 64)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(UnknownWordsError, match="ginger"):  # the message lists what it knows
        clip_text_embedding(clip, "a person with curly hair")
    config = json.loads((DEMO_EDIT_CHECKPOINT / "config.json").read_text())
    assert config["edit"]["clip"] == "./clip_synthetic_captions"
    assert "stand-in" in config["notice"]

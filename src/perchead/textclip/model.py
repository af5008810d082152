"""A small ``transformers.CLIPModel`` and a ``CLIPTokenizer`` made from the captions' vocabulary.

Both are the real CLIP classes, so a folder written by :func:`save_text_clip` loads through
``perchead.losses.load_clip`` exactly as a downloaded CLIP does. The tokenizer is CLIP's byte-level BPE with
merges learned here so that every caption word is one token (any other word falls apart into characters,
which the vocabulary check refuses before it reaches the text tower: perchead.textclip.vocabulary).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .vocabulary import NOTICE_KEY, VOCABULARY_KEY

END_OF_WORD = "</w>"  # CLIPTokenizer's end-of-word suffix


@dataclass(frozen=True)
class TextClipConfig:
    """Size of the stand-in CLIP (both towers are CLIP's transformers)."""

    hidden: int = 96
    layers: int = 3
    heads: int = 4
    image_size: int = 64  # the editing styles are 128 px renders; 64 px keeps hair colour and glasses visible
    patch: int = 16  # 16 tokens: the CPU budget (a 2-core machine shared by several jobs)
    projection_dim: int = 64
    max_text_tokens: int = 32
    seed: int = 0


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first (ties: alphabetical), until every word is a single symbol.

    Deterministic (no hash order). BPE applies merges by rank, so encoding a word of ``words`` replays the
    merges learned for it and ends in one token (tested)."""
    pieces = {w: [*w[:-1], w[-1] + END_OF_WORD] for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in pieces.values():
            counts.update(zip(symbols, symbols[1:], strict=False))
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, symbols in pieces.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            pieces[w] = out


def build_tokenizer(words: list[str]):
    """A ``CLIPTokenizer``: CLIP's byte-level alphabet (so any text encodes) plus one token per word."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + END_OF_WORD] = len(vocab)
    merges = learn_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_text_clip(words: list[str], config: TextClipConfig = TextClipConfig(), notice: str = ""):
    """(CLIPModel with random weights, seed ``config.seed``; its tokenizer). The model's config lists
    ``words`` (the closed vocabulary) and ``notice``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    c = config
    tokenizer = build_tokenizer(words)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=c.hidden, intermediate_size=4 * c.hidden,
                          num_hidden_layers=c.layers, num_attention_heads=c.heads,
                          max_position_embeddings=c.max_text_tokens, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=c.hidden, intermediate_size=4 * c.hidden, num_hidden_layers=c.layers,
                              num_attention_heads=c.heads, image_size=c.image_size, patch_size=c.patch)
    clip_config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             projection_dim=c.projection_dim)
    setattr(clip_config, VOCABULARY_KEY, sorted(set(words)))
    setattr(clip_config, NOTICE_KEY, notice)
    clip_config.perchead_text_clip = asdict(c)
    torch.manual_seed(c.seed)
    return CLIPModel(clip_config), tokenizer


def save_text_clip(model, tokenizer, folder: str | Path, readme: str = "") -> Path:
    """``save_pretrained`` of both into ``folder`` (replaced whole), world-readable (an installed package)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if readme:
        (tmp / "README.md").write_text(readme)
    for f in tmp.iterdir():
        f.chmod(0o644)  # transformers writes weights owner-only
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder

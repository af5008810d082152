"""The closed vocabulary of the caption-trained CLIP stand-in, and the check every prompt passes through.

A real CLIP reads any text. The stand-in (perchead.textclip) learned only the words of the synthetic heads'
captions; any other word would reach its text tower as characters it never saw, i.e. an arbitrary vector.
Its ``config.json`` therefore lists the words it knows (``VOCABULARY_KEY``), and ``clip_text_embedding``
refuses a prompt with any other word, listing the known ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

VOCABULARY_KEY = "perchead_vocabulary"
"""Key of the CLIP config (config.json, top level) listing the words a closed-vocabulary CLIP knows."""
NOTICE_KEY = "perchead_notice"
"""Key of the CLIP config: what users of a stand-in must know (printed with an unknown-word error)."""


class UnknownWordsError(ValueError):
    """A prompt holds words the closed-vocabulary CLIP stand-in never learned."""


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as the check sees them: runs of lower-case letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def closed_vocabulary(config: object) -> frozenset[str] | None:
    """The words a CLIP config says its text tower knows, or None for an open-vocabulary (real) CLIP."""
    words = getattr(config, VOCABULARY_KEY, None)
    return None if words is None else frozenset(str(w) for w in words)


def check_prompts(texts: Sequence[str], vocabulary: Iterable[str], clip_name: str = "") -> None:
    """Raise :class:`UnknownWordsError` naming every unknown word and listing the known ones."""
    known = frozenset(vocabulary)
    unknown = sorted({w for t in texts for w in prompt_words(t) if w not in known})
    empty = [t for t in texts if not prompt_words(t)]
    if not unknown and not empty:
        return
    problem = (f"unknown word(s) {', '.join(repr(w) for w in unknown)}" if unknown
               else f"prompt(s) without words {empty!r}")
    raise UnknownWordsError(
        f"{problem}: the style encoder {clip_name or ''} is the small caption-trained CLIP stand-in, which "
        f"knows only the {len(known)} words of the synthetic heads' captions (not a real CLIP): "
        f"{' '.join(sorted(known))}. Examples: \"red hair\", \"long blonde hair\", \"a bald head\", \"black hair "
        "and glasses\". Pass a real CLIP with --clip (and a checkpoint trained with it) for open text.")

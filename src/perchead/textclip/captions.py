"""Captions of synthetic heads, written from the parameters the generator drew (perchead.data.synth).

The generator records every subject's :class:`~perchead.data.synth.Appearance` in its subject.json; this module
names what a person would see in it (hair colour, bald or not, short / long hair, a bun, glasses, earrings, a
necklace, a collar, skin tone, eye colour) and writes captions with several phrasings per attribute, in the
colour words people type ("ginger", "platinum blonde", "dark brown"...). Every caption mentions a subset of
the attributes, so one caption fits many heads: :func:`caption_fits` says which, for the training targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from perchead.data.synth import _HAIR_PALETTE, _IRIS_PALETTE, _SKIN_DARK, _SKIN_LIGHT

from .vocabulary import prompt_words

# One name per entry of the generator's hair palette (same order), then the ways people say it.
HAIR_COLOURS = ("black", "dark brown", "brown", "light brown", "blonde", "red", "grey", "platinum blonde",
                "purple", "blue")
HAIR_PHRASES: dict[str, tuple[str, ...]] = {
    "black": ("black", "jet black", "raven black"),
    "dark brown": ("dark brown", "brunette", "deep brown"),
    "brown": ("brown", "chestnut brown", "mid brown"),
    "light brown": ("light brown", "dark blonde", "dirty blonde"),
    "blonde": ("blonde", "blond", "golden blonde", "golden"),
    "red": ("red", "ginger", "auburn", "copper"),
    "grey": ("grey", "gray", "silver"),
    "platinum blonde": ("platinum blonde", "white", "platinum", "snow white"),
    "purple": ("purple", "violet", "plum"),
    "blue": ("blue", "navy blue", "dark blue"),
}
EYE_COLOURS = ("brown", "dark brown", "blue", "green", "hazel")  # the generator's iris palette, same order
EYE_PHRASES = {"brown": ("brown",), "dark brown": ("dark brown", "dark"), "blue": ("blue",), "green": ("green",),
               "hazel": ("hazel",)}
SKIN_TONES = ("light", "medium", "dark")
SKIN_PHRASES = {"light": ("light", "pale", "fair"), "medium": ("medium", "tan", "olive"),
                "dark": ("dark", "deep", "brown")}
SKIN_EDGES = (0.3, 0.6)  # the generator's skin mix t (0 = lightest, 1 = darkest) split into the three tones

SUBJECTS = ("a person", "a head", "someone", "a face", "a portrait of a person", "a head of a person")
ATTRIBUTES = ("hair_colour", "bald", "length", "bun", "glasses", "earrings", "necklace", "collar", "skin", "eyes")


@dataclass(frozen=True)
class HeadAttributes:
    """What a caption can say about one synthetic head (None: not applicable, e.g. the hair of a bald head)."""

    hair_colour: str | None
    bald: bool
    length: str | None  # "short" | "long"
    bun: bool
    glasses: bool
    earrings: bool
    necklace: bool
    collar: bool
    skin: str
    eyes: str


def _nearest_palette(rgb: Sequence[float], palette: np.ndarray) -> int:
    """The palette entry the generator most likely drew: it scales an entry by U(0.8, 1.2) and adds noise,
    so each entry is compared at its best scale in that range."""
    c = np.asarray(rgb, dtype=np.float64)
    scale = np.clip((palette @ c) / np.maximum((palette * palette).sum(1), 1e-9), 0.8, 1.2)
    return int(np.argmin(((scale[:, None] * palette - c) ** 2).sum(1)))


def attributes_from_appearance(app: Mapping) -> HeadAttributes:
    """``subject.json``'s ``appearance`` (or ``dataclasses.asdict`` of a synth ``Appearance``) -> attributes."""
    bald = bool(app["bald"])
    skin = np.asarray(app["skin"], dtype=np.float64)
    d = _SKIN_DARK - _SKIN_LIGHT
    t = float(np.clip((skin - _SKIN_LIGHT) @ d / (d @ d), 0.0, 1.0))
    return HeadAttributes(
        hair_colour=None if bald else HAIR_COLOURS[_nearest_palette(app["hair"], _HAIR_PALETTE)],
        bald=bald, length=None if bald else ("long" if float(app["hair_length"]) > 0 else "short"),
        bun=bool(app["bun"]), glasses=bool(app["glasses"]), earrings=bool(app["earrings"]),
        necklace=bool(app["necklace"]), collar=bool(app["collar"]),
        skin=SKIN_TONES[int(np.searchsorted(SKIN_EDGES, t))],
        eyes=EYE_COLOURS[_nearest_palette(app["iris"], _IRIS_PALETTE)],
    )


# A caption's claim: (attribute, value). Only claims a head satisfies are ever written for it.
Claim = tuple[str, object]


def _claims(a: HeadAttributes) -> list[Claim]:
    out: list[Claim] = [("skin", a.skin), ("eyes", a.eyes), ("bald", a.bald)]
    if not a.bald:
        out += [("hair_colour", a.hair_colour), ("length", a.length)]
    for name in ("bun", "glasses", "earrings", "necklace", "collar"):
        if getattr(a, name):
            out.append((name, True))
    return out


def _phrase(claim: Claim, rng: np.random.Generator, with_colour: str | None = None) -> str:
    """One phrasing of a claim. ``with_colour``: the hair-colour words to fold into a hair-length phrase."""
    name, value = claim
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if name == "hair_colour":
        return pick(("{} hair", "{} hair", "{} coloured hair", "hair that is {}")).format(pick(HAIR_PHRASES[value]))
    if name == "length":
        colour = f"{with_colour} " if with_colour else ""
        if value == "long":
            return pick((f"long {colour}hair", f"long {colour}hair", f"{colour}hair down to the shoulders"))
        return pick((f"short {colour}hair", f"short {colour}hair", f"cropped {colour}hair"))
    if name == "bald":
        return pick(("a bald head", "no hair", "a shaved head", "bald"))  # only heads that are bald say so
    if name == "skin":
        tone = pick(SKIN_PHRASES[value])
        return pick((f"{tone} skin", f"{'an' if tone[0] in 'aeiou' else 'a'} {tone} skin tone", f"{tone} skin"))
    if name == "eyes":
        return pick(("{} eyes",)).format(pick(EYE_PHRASES[value]))
    return {
        "bun": pick(("a bun", "hair in a bun", "a hair bun")),
        "glasses": pick(("glasses", "eyeglasses", "spectacles", "glasses on")),
        "earrings": pick(("earrings", "ear rings")),
        "necklace": pick(("a necklace", "a chain necklace")),
        "collar": pick(("a collar", "a shirt collar", "a collared shirt")),
    }[name]


def sample_caption(a: HeadAttributes, rng: np.random.Generator) -> tuple[str, tuple[Claim, ...]]:
    """A random caption of head ``a`` and the claims it makes. The hair (colour, else baldness) is named in
    most captions: it is what text edits ask for most; the other attributes appear at random."""
    claims = _claims(a)
    main = [c for c in claims if c[0] in ("hair_colour", "bald")]
    rest = [c for c in claims if c[0] not in ("hair_colour", "bald")]
    chosen: list[Claim] = []
    if rng.random() < 0.85:
        chosen += main[:1] if a.bald else [next(c for c in main if c[0] == "hair_colour")]
    k = int(rng.integers(0, 3)) if chosen else int(rng.integers(1, 3))
    for i in rng.permutation(len(rest))[:k]:
        chosen.append(rest[int(i)])
    if not chosen:
        chosen = [rest[0]]
    colour = next((c for c in chosen if c[0] == "hair_colour"), None)
    length = next((c for c in chosen if c[0] == "length"), None)
    fold = colour is not None and length is not None and rng.random() < 0.5  # "long red hair"
    parts = []
    for i in rng.permutation(len(chosen)):
        c = chosen[int(i)]
        if fold and c is colour:
            continue
        words = None
        if fold and c is length:
            options = HAIR_PHRASES[colour[1]]
            words = options[int(rng.integers(len(options)))]
        parts.append(_phrase(c, rng, words))
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if rng.random() < 0.35:
        return body, tuple(chosen)
    return f"{SUBJECTS[int(rng.integers(len(SUBJECTS)))]} with {body}", tuple(chosen)


def caption_fits(claims: Sequence[Claim], a: HeadAttributes) -> bool:
    """Whether head ``a`` satisfies every claim of a caption (so the caption is a true description of it)."""
    have = set(_claims(a))
    return all(c in have for c in claims)


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain, sorted: the stand-in's tokenizer knows exactly these."""
    words: set[str] = set()
    rng = np.random.default_rng(0)
    texts = list(SUBJECTS) + ["with and hair"]
    for options in HAIR_PHRASES.values():
        texts.extend(options)
    texts += [o for opts in SKIN_PHRASES.values() for o in opts] + [o for opts in EYE_PHRASES.values() for o in opts]
    # every template word, by drawing captions of every kind of head until no new word appears
    for _ in range(4000):
        a = HeadAttributes(hair_colour=HAIR_COLOURS[int(rng.integers(10))], bald=bool(rng.random() < 0.2),
                           length=("long", "short")[int(rng.integers(2))], bun=True, glasses=True, earrings=True,
                           necklace=True, collar=True, skin=SKIN_TONES[int(rng.integers(3))],
                           eyes=EYE_COLOURS[int(rng.integers(5))])
        if a.bald:
            a = HeadAttributes(None, True, None, False, True, True, True, True, a.skin, a.eyes)
        texts.append(sample_caption(a, rng)[0])
    for t in texts:
        words.update(prompt_words(t))
    return sorted(words)




# Prompts of the evaluation: one per value of each attribute, as a user would type them.
def evaluation_prompts() -> dict[str, dict[object, list[str]]]:
    """attribute -> value -> prompts (several phrasings); the value's claims are (attribute, value)."""
    return {
        "hair_colour": {c: [f"{p} hair" for p in HAIR_PHRASES[c]] for c in HAIR_COLOURS},
        "length": {"short": ["short hair"], "long": ["long hair"]},
        "bald": {True: ["bald", "a bald head", "a shaved head"]},
        "glasses": {True: ["glasses", "a person with glasses"]},
        "skin": {s: [f"{p} skin" for p in SKIN_PHRASES[s]] for s in SKIN_TONES},
        "eyes": {e: [f"{p} eyes" for p in EYE_PHRASES[e]] for e in EYE_COLOURS},
        "bun": {True: ["hair in a bun"]},
        "earrings": {True: ["earrings"]},
        "necklace": {True: ["a necklace"]},
        "collar": {True: ["a collar"]},
    }

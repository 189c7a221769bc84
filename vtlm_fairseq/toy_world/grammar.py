"""Caption templates rendered in English and German, with German article and
adjective agreement in gender and case."""

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .lexicon import Colour, Noun

INDEFINITE = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
DEFINITE = {
    "nom": {"m": "der", "f": "die", "n": "das"},
    "acc": {"m": "den", "f": "die", "n": "das"},
    "dat": {"m": "dem", "f": "der", "n": "dem"},
}
# adjective endings after an indefinite (mixed) or definite (weak) article
MIXED_ENDINGS = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
WEAK_ENDINGS = {
    "nom": {"m": "e", "f": "e", "n": "e"},
    "acc": {"m": "en", "f": "e", "n": "e"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}


@dataclass(frozen=True)
class Mention:
    """An object as a caption names it."""

    noun: Noun
    colour: Optional[Colour]


def english_np(m: Mention, definite: bool) -> str:
    words = ([m.colour.en] if m.colour else []) + [m.noun.en]
    if definite:
        return " ".join(["the"] + words)
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def german_np(m: Mention, case: str, definite: bool) -> str:
    g = m.noun.gender
    article = (DEFINITE if definite else INDEFINITE)[case][g]
    words = [article]
    if m.colour:
        endings = WEAK_ENDINGS if definite else MIXED_ENDINGS
        words.append(m.colour.de + endings[case][g])
    words.append(m.noun.de)
    return " ".join(words)


@dataclass(frozen=True)
class Template:
    """A caption frame: ``objects`` object mentions, and a person if ``person``."""

    name: str
    person: bool
    objects: int
    render: Callable[[Optional[Noun], List[Mention]], Tuple[str, str]]


def _person_de(p: Noun) -> str:
    return f"{INDEFINITE['nom'][p.gender]} {p.de}"


TEMPLATES: List[Template] = [
    Template(
        "next_to", False, 2,
        lambda p, o: (
            f"{english_np(o[0], False)} is next to {english_np(o[1], False)}.",
            f"{german_np(o[0], 'nom', False)} ist neben {german_np(o[1], 'dat', False)}.",
        ),
    ),
    Template(
        "left_of", False, 2,
        lambda p, o: (
            f"{english_np(o[0], True)} is to the left of {english_np(o[1], True)}.",
            f"{german_np(o[0], 'nom', True)} ist links von {german_np(o[1], 'dat', True)}.",
        ),
    ),
    Template(
        "in_picture", False, 1,
        lambda p, o: (
            f"there is {english_np(o[0], False)} in the picture.",
            f"auf dem Bild ist {german_np(o[0], 'nom', False)}.",
        ),
    ),
    Template(
        "on_ground", False, 1,
        lambda p, o: (
            f"{english_np(o[0], False)} lies on the ground.",
            f"{german_np(o[0], 'nom', False)} liegt auf dem Boden.",
        ),
    ),
    Template(
        "holds", True, 1,
        lambda p, o: (
            f"a {p.en} holds {english_np(o[0], False)}.",
            f"{_person_de(p)} hält {german_np(o[0], 'acc', False)}.",
        ),
    ),
    Template(
        "looks_at", True, 1,
        lambda p, o: (
            f"a {p.en} looks at {english_np(o[0], True)}.",
            f"{_person_de(p)} schaut {german_np(o[0], 'acc', True)} an.",
        ),
    ),
    Template(
        "sits_next_to", True, 1,
        lambda p, o: (
            f"a {p.en} is sitting next to {english_np(o[0], False)}.",
            f"{_person_de(p)} sitzt neben {german_np(o[0], 'dat', False)}.",
        ),
    ),
    Template(
        "sees_both", True, 2,
        lambda p, o: (
            f"a {p.en} sees {english_np(o[0], False)} and {english_np(o[1], False)}.",
            f"{_person_de(p)} sieht {german_np(o[0], 'acc', False)} und "
            f"{german_np(o[1], 'acc', False)}.",
        ),
    ),
]  # fmt: skip


def capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]

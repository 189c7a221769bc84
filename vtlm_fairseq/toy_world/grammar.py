"""Caption templates rendered in English and German, with German article and
adjective agreement in gender and case."""

from dataclasses import dataclass
from typing import List, Optional, Tuple

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
    """A caption frame with object slots ``{0}``, ``{1}`` and a person slot
    ``{p}``; each object slot says how English and German render its noun
    phrase (definite or not; German case)."""

    name: str
    en: str
    de: str
    en_definite: Tuple[bool, ...]
    de_forms: Tuple[Tuple[str, bool], ...]  # (case, definite) per object slot

    @property
    def objects(self) -> int:
        return len(self.de_forms)

    @property
    def person(self) -> bool:
        return "{p}" in self.en

    def render(self, person: Optional[Noun], mentions: List[Mention]) -> Tuple[str, str, List[str]]:
        """(English, German, German noun phrase of each mention)."""
        en_nps = [english_np(m, d) for m, d in zip(mentions, self.en_definite)]
        de_nps = [german_np(m, case, d) for m, (case, d) in zip(mentions, self.de_forms)]
        en = self.en.format(*en_nps, p=person.en if person else "")
        de = self.de.format(*de_nps, p=_person_de(person) if person else "")
        return en, de, de_nps


def _person_de(p: Noun) -> str:
    return f"{INDEFINITE['nom'][p.gender]} {p.de}"


TEMPLATES: List[Template] = [
    Template("next_to", "{0} is next to {1}.", "{0} ist neben {1}.",
             (False, False), (("nom", False), ("dat", False))),
    Template("left_of", "{0} is to the left of {1}.", "{0} ist links von {1}.",
             (True, True), (("nom", True), ("dat", True))),
    Template("in_picture", "there is {0} in the picture.", "auf dem Bild ist {0}.",
             (False,), (("nom", False),)),
    Template("on_ground", "{0} lies on the ground.", "{0} liegt auf dem Boden.",
             (False,), (("nom", False),)),
    Template("holds", "a {p} holds {0}.", "{p} hält {0}.", (False,), (("acc", False),)),
    Template("looks_at", "a {p} looks at {0}.", "{p} schaut {0} an.", (True,), (("acc", True),)),
    Template("sits_next_to", "a {p} is sitting next to {0}.", "{p} sitzt neben {0}.",
             (False,), (("dat", False),)),
    Template("sees_both", "a {p} sees {0} and {1}.", "{p} sieht {0} und {1}.",
             (False, False), (("acc", False), ("acc", False))),
]  # fmt: skip


def capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]

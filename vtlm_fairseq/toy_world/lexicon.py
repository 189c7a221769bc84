"""The toy world's vocabulary: objects named by OpenImages-v4 detector classes,
with English and German nouns (German gender drives article and adjective
agreement), colours, people and unmentioned background classes.

Some English nouns name two detector classes with different German
translations (``bat``: Fledermaus or Schläger): only the image tells which.
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

OBJECT_VOCAB = Path(__file__).resolve().parent.parent / "resources" / "object_vocab.json"


@dataclass(frozen=True)
class Noun:
    en: str
    de: str
    gender: str  # m, f or n
    class_name: str  # OpenImages-v4 class of the detector

    @property
    def class_id(self) -> int:
        return class_ids()[self.class_name]


@dataclass(frozen=True)
class Colour:
    en: str
    de: str  # adjective stem; endings follow case, gender and article


@lru_cache(maxsize=None)
def class_ids() -> Dict[str, int]:
    with open(OBJECT_VOCAB) as f:
        return {name: int(i) for i, name in json.load(f).items()}


OBJECTS: List[Noun] = [
    Noun("dog", "Hund", "m", "Dog"),
    Noun("cat", "Katze", "f", "Cat"),
    Noun("horse", "Pferd", "n", "Horse"),
    Noun("bird", "Vogel", "m", "Bird"),
    Noun("car", "Auto", "n", "Car"),
    Noun("bicycle", "Fahrrad", "n", "Bicycle"),
    Noun("boat", "Boot", "n", "Boat"),
    Noun("chair", "Stuhl", "m", "Chair"),
    Noun("umbrella", "Regenschirm", "m", "Umbrella"),
    Noun("guitar", "Gitarre", "f", "Guitar"),
    Noun("book", "Buch", "n", "Book"),
    Noun("bottle", "Flasche", "f", "Bottle"),
    Noun("kite", "Drachen", "m", "Kite"),
    Noun("apple", "Apfel", "m", "Apple"),
    Noun("vase", "Vase", "f", "Vase"),
    Noun("balloon", "Ballon", "m", "Balloon"),
    Noun("bench", "Bank", "f", "Bench"),
    Noun("helmet", "Helm", "m", "Helmet"),
    Noun("bowl", "Schüssel", "f", "Bowl"),
    Noun("tent", "Zelt", "n", "Tent"),
    Noun("train", "Zug", "m", "Train"),
    Noun("bus", "Bus", "m", "Bus"),
    Noun("truck", "Lastwagen", "m", "Truck"),
    Noun("backpack", "Rucksack", "m", "Backpack"),
]

# English noun -> its senses; each sense is a different detector class.
AMBIGUOUS: Dict[str, List[Noun]] = {
    "bat": [Noun("bat", "Fledermaus", "f", "Bat"), Noun("bat", "Schläger", "m", "Baseball bat")],
    "keyboard": [
        Noun("keyboard", "Tastatur", "f", "Computer keyboard"),
        Noun("keyboard", "Keyboard", "n", "Musical keyboard"),
    ],
    "clock": [Noun("clock", "Wanduhr", "f", "Wall clock"), Noun("clock", "Wecker", "m", "Alarm clock")],
    "cup": [Noun("cup", "Tasse", "f", "Coffee cup"), Noun("cup", "Messbecher", "m", "Measuring cup")],
    "ball": [Noun("ball", "Fußball", "m", "Football"), Noun("ball", "Tennisball", "m", "Tennis ball")],
    "light": [Noun("light", "Ampel", "f", "Traffic light"), Noun("light", "Lampe", "f", "Lamp")],
    # senses of one gender: neither article nor adjective gives them away
    "board": [Noun("board", "Surfbrett", "n", "Surfboard"), Noun("board", "Schneidebrett", "n", "Cutting board")],
    "hat": [Noun("hat", "Cowboyhut", "m", "Cowboy hat"), Noun("hat", "Sonnenhut", "m", "Sun hat")],
    "table": [
        Noun("table", "Couchtisch", "m", "Coffee table"),
        Noun("table", "Billardtisch", "m", "Billiard table"),
    ],
    "racket": [
        Noun("racket", "Tennisschläger", "m", "Tennis racket"),
        Noun("racket", "Tischtennisschläger", "m", "Table tennis racket"),
    ],
}

PEOPLE: List[Noun] = [
    Noun("man", "Mann", "m", "Man"),
    Noun("woman", "Frau", "f", "Woman"),
    Noun("boy", "Junge", "m", "Boy"),
    Noun("girl", "Mädchen", "n", "Girl"),
]

COLOURS: List[Colour] = [
    Colour("red", "rot"),
    Colour("blue", "blau"),
    Colour("green", "grün"),
    Colour("yellow", "gelb"),
    Colour("black", "schwarz"),
    Colour("white", "weiß"),
]

# Detected but never mentioned: the clutter of a real detector's top 36. Each
# scene has a setting whose clutter it shows (most common first), and a
# person comes with detections of their parts, as real detections co-occur.
SETTINGS: Dict[str, List[str]] = {
    "indoor": ["Window", "Picture frame", "Shelf", "Door", "Curtain", "Poster"],
    "park": ["Tree", "Plant", "Flower", "Palm tree", "Fountain"],
    "street": ["Building", "Wheel", "Street light", "House", "Traffic sign", "Skyscraper"],
}
PERSON_PARTS: List[str] = ["Human face", "Human hand", "Clothing", "Footwear", "Human hair"]
BACKGROUND_CLASSES: List[str] = sorted(
    {c for classes in SETTINGS.values() for c in classes} | set(PERSON_PARTS)
)

SENSES: List[Noun] = [sense for senses in AMBIGUOUS.values() for sense in senses]
ALL_NOUNS: List[Noun] = OBJECTS + SENSES + PEOPLE


def check_lexicon() -> None:
    """Every class name must exist in the detector's vocabulary."""
    ids = class_ids()
    unknown = [n.class_name for n in ALL_NOUNS if n.class_name not in ids]
    unknown += [c for c in BACKGROUND_CLASSES if c not in ids]
    if unknown:
        raise ValueError(f"classes not in {OBJECT_VOCAB}: {unknown}")
    used = [n.class_name for n in ALL_NOUNS] + BACKGROUND_CLASSES
    if len(set(used)) != len(used):
        raise ValueError("a detector class is used twice in the toy lexicon")

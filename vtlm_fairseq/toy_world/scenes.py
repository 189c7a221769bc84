"""Scenes of the toy world, their captions, and the detector output an image
of the scene would give: one region per object (sometimes a second, weaker
detection of it), the person and their face, then background clutter, with
features made of fixed class and colour prototypes plus noise."""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from ..data.feature_store import RegionFeatures
from ..errors import InputError
from .grammar import TEMPLATES, Mention, capitalise
from .lexicon import AMBIGUOUS, COLOURS, OBJECTS, PEOPLE, PERSON_PARTS, SETTINGS, Colour, Noun, class_ids

MAX_OBJECTS = 3
# salient regions at most: objects, their duplicate detections, person, parts
MIN_REGIONS = 2 * MAX_OBJECTS + 1 + len(PERSON_PARTS)
REGIONS_NEEDED = (
    f" regions: an image can show {MAX_OBJECTS} objects, a second detection of each, a person and "
    f"{len(PERSON_PARTS)} of their parts"
)


@dataclass
class SceneObject:
    noun: Noun
    colour: Colour


@dataclass
class Scene:
    objects: List[SceneObject]
    person: Optional[Noun]
    setting: str


@dataclass
class Caption:
    en: str
    de: str
    template: str
    # ambiguous words of this caption: (English noun, the sense the image
    # shows, its German noun phrase as the sentence has it)
    ambiguous: List[Tuple[str, Noun, str]]
    # what the caption was rendered from, to render it again with another
    # sense (the contrastive set)
    person: Optional[Noun] = None
    mentions: List[Mention] = field(default_factory=list)


def sample_scene(rng: np.random.Generator, ambiguous_rate: float) -> Scene:
    """1-3 objects with distinct English nouns, each an ambiguous-noun sense
    with probability ``ambiguous_rate``; a person in 60% of scenes."""
    objects, used = [], set()
    ambiguous_words = sorted(AMBIGUOUS)
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        for _attempt in range(20):
            if rng.random() < ambiguous_rate:
                senses = AMBIGUOUS[ambiguous_words[rng.integers(len(ambiguous_words))]]
                noun = senses[rng.integers(len(senses))]
            else:
                noun = OBJECTS[rng.integers(len(OBJECTS))]
            if noun.en not in used:
                break
        else:
            continue
        used.add(noun.en)
        objects.append(SceneObject(noun, COLOURS[rng.integers(len(COLOURS))]))
    person = PEOPLE[rng.integers(len(PEOPLE))] if rng.random() < 0.6 else None
    settings = sorted(SETTINGS)
    return Scene(objects, person, settings[rng.integers(len(settings))])


def sample_caption(
    rng: np.random.Generator, scene: Scene, colour_rate: float = 0.75
) -> Caption:
    fitting = [
        t
        for t in TEMPLATES
        if t.objects <= len(scene.objects) and (scene.person is not None or not t.person)
    ]
    template = fitting[rng.integers(len(fitting))]
    picked = rng.choice(len(scene.objects), size=template.objects, replace=False)
    mentions = []
    for i in picked:
        obj = scene.objects[i]
        colour = obj.colour if rng.random() < colour_rate else None
        mentions.append(Mention(obj.noun, colour))
    en, de, de_nps = template.render(scene.person, mentions)
    ambiguous = [(m.noun.en, m.noun, np_) for m, np_ in zip(mentions, de_nps) if m.noun.en in AMBIGUOUS]
    return Caption(capitalise(en), capitalise(de), template.name, ambiguous, scene.person, mentions)


class RegionPrototypes:
    """Detector output made of fixed class (and colour) prototypes plus
    noise. The prototypes and each class's typical box size are fixed by the
    seed, so a class looks alike in every split and every image."""

    def __init__(self, seed: int, feature_dim: int, noise: float = 0.5):
        proto_rng = np.random.default_rng([seed, 0xFEA7])
        n_classes = len(class_ids())
        self.class_protos = proto_rng.standard_normal((n_classes, feature_dim)).astype(np.float32)
        self.colour_protos = 0.5 * proto_rng.standard_normal(
            (len(COLOURS), feature_dim)
        ).astype(np.float32)
        self.class_sizes = proto_rng.uniform(0.08, 0.5, n_classes).astype(np.float32)
        self.feature_dim = feature_dim
        self.noise = noise

    def regions(self, rng: np.random.Generator, specs) -> RegionFeatures:
        """specs: (class id, colour index or None, (lowest, highest score)) per
        detection; the regions come out best score first, as a detector's."""
        n = len(specs)
        classes = np.array([s[0] for s in specs], dtype=np.int64)
        lo, hi = np.array([s[2] for s in specs], dtype=np.float32).reshape(n, 2).T
        scores = lo + (hi - lo) * rng.random(n, dtype=np.float32)
        size = self.class_sizes[classes][:, None] * rng.uniform(0.7, 1.3, (n, 2)).astype(np.float32)
        top_left = (1.0 - size) * rng.random((n, 2), dtype=np.float32)
        boxes = np.concatenate([top_left, top_left + size], axis=1)  # ymin, xmin, ymax, xmax
        features = self.class_protos[classes]
        coloured = [i for i, s in enumerate(specs) if s[1] is not None]
        if coloured:
            features = features.copy()
            features[coloured] += self.colour_protos[np.array([specs[i][1] for i in coloured], dtype=np.int64)]
        features = features + self.noise * rng.standard_normal(features.shape, dtype=np.float32)
        np.maximum(features, 0.0, out=features)  # pooled CNN activations are >= 0
        order = np.argsort(-scores, kind="stable")
        return RegionFeatures(
            features=features[order],
            boxes=np.clip(boxes[order], 0.0, 1.0),
            classes=classes[order],
            scores=scores[order],
        )


class RegionRenderer(RegionPrototypes):
    """Turns toy-world scenes into detector output: one region per object
    (sometimes a second, weaker detection of it), the person and their
    parts, then background clutter of the scene's setting."""

    def __init__(self, seed: int, num_regions: int, feature_dim: int, noise: float = 0.5):
        if num_regions < MIN_REGIONS:
            raise InputError(f"{num_regions} regions per image: the minimum is {MIN_REGIONS}{REGIONS_NEEDED}")
        super().__init__(seed, feature_dim, noise)
        self.num_regions = num_regions
        ids = class_ids()
        self._settings = {name: [ids[c] for c in classes] for name, classes in SETTINGS.items()}
        self._parts = [ids[c] for c in PERSON_PARTS]

    def _clutter(self, rng, setting: str) -> int:
        classes = self._settings[setting]
        weights = 1.0 / np.arange(1, len(classes) + 1)  # Zipf: a few dominate
        return classes[rng.choice(len(classes), p=weights / weights.sum())]

    def render(self, rng: np.random.Generator, scene: Scene) -> RegionFeatures:
        specs = []  # (class id, colour index, score range)
        for obj in scene.objects:
            colour = COLOURS.index(obj.colour)
            specs.append((obj.noun.class_id, colour, (0.75, 1.0)))
            if rng.random() < 0.3:  # a second, weaker box on the same object
                specs.append((obj.noun.class_id, colour, (0.3, 0.7)))
        if scene.person is not None:
            specs.append((scene.person.class_id, rng.integers(len(COLOURS)), (0.6, 0.99)))
            for part in self._parts[: 2 + rng.integers(len(self._parts) - 1)]:
                specs.append((part, rng.integers(len(COLOURS)), (0.3, 0.9)))
        while len(specs) < self.num_regions:
            specs.append((self._clutter(rng, scene.setting), rng.integers(len(COLOURS)), (0.05, 0.6)))
        return self.regions(rng, specs)

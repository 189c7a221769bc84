"""The toy world's contrastive set, in CoMMuTE's layout (Futeral et al.,
2023): per ambiguous word of a caption, the English caption, its image, the
correct German caption and the same caption rendered again with the other
sense of that noun phrase (article and adjective agreeing with its gender).
``vtlm-probe contrastive`` scores it."""

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple

from .grammar import TEMPLATES, capitalise
from .lexicon import AMBIGUOUS
from .scenes import Caption

# CoMMuTE's file names; line i of the four files is example i
FILES = ("src.en", "correct.de", "incorrect.de", "img.order")
_TEMPLATES = {t.name: t for t in TEMPLATES}


def other_sense_captions(caption: Caption) -> Iterator[Tuple[str, str]]:
    """(German noun of the other sense, German caption with it) for each
    ambiguous mention of the caption and each of its other senses, in the
    order of the caption's ambiguity annotations."""
    template = _TEMPLATES[caption.template]
    for i, mention in enumerate(caption.mentions):
        if mention.noun.en not in AMBIGUOUS:
            continue
        for sense in AMBIGUOUS[mention.noun.en]:
            if sense == mention.noun:
                continue
            mentions = list(caption.mentions)
            mentions[i] = replace(mention, noun=sense)
            en, de, _ = template.render(caption.person, mentions)
            assert capitalise(en) == caption.en, "the senses of an ambiguous noun share their English noun"
            yield sense.de, capitalise(de)


def write_contrastive_set(folder, rows: Iterable[Tuple[str, Caption]]) -> int:
    """``folder``/src.en, correct.de, incorrect.de, img.order from a split's
    (image name, caption) rows; returns the number of examples."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns: List[List[str]] = [[] for _ in FILES]
    for image, caption in rows:
        for _, incorrect in other_sense_captions(caption):
            for column, value in zip(columns, (caption.en, caption.de, incorrect, image)):
                column.append(value)
    for name, column in zip(FILES, columns):
        with open(folder / name, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in column)
    return len(columns[0])

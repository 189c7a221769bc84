"""Words of binarised sentences (BPE pieces joined back), normalised as the
paper's text is (lowercase, no accents), and entity word lists: English
words with their German equivalents. Used by the probes (entity masking,
masked words) and by training that degrades the source where the image can
make up for it."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

from ..errors import InputError
from ..text.tokenization import strip_accents

MULTI30K_WORDS = Path(__file__).resolve().parents[1] / "resources" / "entity_words.en-de.json"


def word_spans(dictionary, tokens: Sequence[int], bpe_separator: str = "@@") -> List[Tuple[str, int, int]]:
    """Words of a binarised sentence as (normalised word, start, end) over
    token positions; BPE pieces ending in ``@@`` join the next piece."""
    spans, start, pieces = [], 0, []
    for i, tok in enumerate(tokens):
        if tok == dictionary.eos():
            break
        piece = dictionary[tok]
        if piece.endswith(bpe_separator):
            pieces.append(piece[: -len(bpe_separator)])
            continue
        pieces.append(piece)
        spans.append((normalise("".join(pieces)), start, i + 1))
        pieces, start = [], i + 1
    return spans


def normalise(word: str) -> str:
    return strip_accents(word.lower())


@dataclass
class EntityWords:
    """Normalised English entity word -> its normalised German equivalents."""

    german: Dict[str, Set[str]]

    @classmethod
    def load(cls, path=None) -> "EntityWords":
        """The Multi30k list (default), or a toy world's ``lexicon.json``."""
        path = Path(path or MULTI30K_WORDS)
        if not path.is_file():
            raise InputError(f"{path}: no such word list")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # not UTF-8, not JSON
            raise InputError(f"{path}: not a JSON word list ({e})") from None
        if not isinstance(data, dict) or not {"entries", "nouns"} & set(data):
            raise InputError(f"{path}: neither an entity word list (with 'entries') nor a toy world lexicon "
                             "(with 'nouns')")  # fmt: skip
        german: Dict[str, Set[str]] = {}
        try:
            if "entries" in data:  # the repo's list: {class, en: [...], de: [...]}
                for entry in data["entries"]:
                    for en in entry["en"]:
                        german.setdefault(normalise(en), set()).update(normalise(d) for d in entry["de"])
            else:  # toy world lexicon: one entry per sense
                for noun in data["nouns"]:
                    german.setdefault(normalise(noun["en"]), set()).add(normalise(noun["de"]))
        except (KeyError, TypeError, AttributeError) as e:
            kind = "entity word list (entries of en, de)" if "entries" in data else "toy world lexicon (nouns: en, de)"
            raise InputError(f"{path}: not a well-formed {kind}: {type(e).__name__} {e}") from None
        if not german:
            raise InputError(f"{path}: no words in it")
        return cls(german)

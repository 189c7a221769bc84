"""Ambiguous-word accuracy: the share of ambiguous English source words whose
image-given German sense appears in the translation."""

import json
import re
from typing import Dict, List, Sequence

from ..data.tokenization import remove_bpe, strip_accents

_WORD = re.compile(r"\w+")


def words(text: str) -> List[str]:
    """Words of a hypothesis or noun, compared case- and accent-insensitively,
    so raw, tokenised and BPE'd (``@@ ``) text all score the same."""
    return _WORD.findall(strip_accents(remove_bpe(text).lower()))


def read_annotations(path) -> List[List[Dict]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def ambiguous_word_accuracy(
    hypotheses: Sequence[str], annotations: Sequence[List[Dict]]
) -> Dict[str, float]:
    """``annotations[i]`` lists the ambiguous words of source i as dicts with
    the correct German noun ``de`` and the other senses' ``alternatives``."""
    if len(hypotheses) != len(annotations):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(annotations)} annotated sources"
        )
    total = correct = wrong_sense = 0
    for hyp, items in zip(hypotheses, annotations):
        hyp_words = set(words(hyp))
        for item in items:
            total += 1
            if set(words(item["de"])) <= hyp_words:
                correct += 1
            elif any(set(words(alt)) <= hyp_words for alt in item["alternatives"]):
                wrong_sense += 1
    return {
        "ambiguous_words": total,
        "correct": correct,
        "wrong_sense": wrong_sense,
        "accuracy": 100.0 * correct / total if total else float("nan"),
    }

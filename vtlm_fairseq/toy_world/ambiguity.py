"""Ambiguous-word accuracy: the share of ambiguous English source words whose
image-given German sense appears in the translation."""

import json
import re
from typing import Dict, List, Sequence

from ..text.corpus import CorpusError, read_lines
from ..text.tokenization import remove_bpe, strip_accents
from ..errors import InputError

_WORD = re.compile(r"\w+")


def words(text: str) -> List[str]:
    """Words of a hypothesis or noun, compared case- and accent-insensitively,
    so raw, tokenised and BPE'd (``@@ ``) text all score the same."""
    return _WORD.findall(strip_accents(remove_bpe(text).lower()))


def _is_annotation(item) -> bool:
    """What the world writes per ambiguous word and its readers use (the
    scorer, the probes): "en", "de", "de_np" strings and "alternatives"."""
    return (
        isinstance(item, dict)
        and all(isinstance(item.get(key), str) for key in ("en", "de", "de_np"))
        and isinstance(item.get("alternatives"), list)
        and all(isinstance(alt, str) for alt in item["alternatives"])
    )


def read_annotations(path) -> List[List[Dict]]:
    """``ambiguity/{split}.jsonl``: per sentence, a JSON list of its
    ambiguous words; raises CorpusError naming the file and line of one
    that is not JSON or not such a list."""
    annotations = []
    for lineno, line in enumerate(read_lines(path), start=1):
        try:
            items = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(items, list) or not all(_is_annotation(item) for item in items):
            raise CorpusError(
                f"{path}:{lineno}: not a list of ambiguous words (objects with strings en, de, de_np and "
                f"a list of strings alternatives): {line[:80]!r}"
            )
        annotations.append(items)
    return annotations


def ambiguous_word_accuracy(
    hypotheses: Sequence[str], annotations: Sequence[List[Dict]]
) -> Dict[str, float]:
    """``annotations[i]`` lists the ambiguous words of source i as dicts with
    the correct German noun ``de`` and the other senses' ``alternatives``."""
    if len(hypotheses) != len(annotations):
        raise InputError(
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

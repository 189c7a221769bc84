"""Joint BPE with subword-nmt: learned on the training text of both languages,
applied to every split."""

import io
from collections import Counter
from pathlib import Path
from typing import Iterable, List

from subword_nmt.apply_bpe import BPE
from subword_nmt.learn_bpe import learn_bpe


def learn_joint_bpe(corpora: Iterable[Iterable[str]], codes_path, merges: int) -> None:
    """Learns ``merges`` merge operations on the word counts of all corpora
    together (one codes file shared by both languages)."""
    counts = Counter()
    for lines in corpora:
        for line in lines:
            counts.update(line.split())
    # subword-nmt reads a "word count" dictionary when is_dict=True: counting
    # once here avoids concatenating the corpora into a temporary file.
    vocab = io.StringIO("".join(f"{w} {c}\n" for w, c in counts.items()))
    with open(codes_path, "w", encoding="utf-8") as out:
        learn_bpe(vocab, out, merges, min_frequency=2, is_dict=True)


class BPEApplier:
    def __init__(self, codes_path, separator: str = "@@"):
        with open(codes_path, encoding="utf-8") as codes:
            self._bpe = BPE(codes, separator=separator)

    def __call__(self, lines: Iterable[str]) -> List[str]:
        return [self._bpe.process_line(line) for line in lines]


def apply_bpe_lines(args):
    """Pool-friendly: (codes_path, lines) -> segmented lines."""
    codes_path, lines = args
    return BPEApplier(Path(codes_path))(lines)

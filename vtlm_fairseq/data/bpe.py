"""Joint BPE with subword-nmt: learned on the training text of both languages,
applied to every split. Codes in fastBPE's format (``left right count`` per
line, as the reference's ``bpe50k.codes``) are applied too, with the same
result as fastBPE: both merge the lowest-ranked pair first and mark a word's
end by ``</w>`` on its last symbol (subword-nmt's codes version 0.2)."""

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


def read_codes(codes_path) -> io.StringIO:
    """The codes as subword-nmt reads them; fastBPE codes lose their counts
    and gain the version-0.2 header (without it subword-nmt would treat
    ``</w>`` as a separate symbol, version 0.1)."""
    text = Path(codes_path).read_text(encoding="utf-8")
    first = text.split("\n", 1)[0]
    if first.startswith("#version") or len(first.split(" ")) != 3:
        return io.StringIO(text)
    merges = []
    for number, line in enumerate(text.rstrip("\n").split("\n"), 1):
        fields = line.split(" ")
        if len(fields) != 3 or not fields[2].isdigit():
            raise ValueError(f"{codes_path}:{number}: not a fastBPE merge ('left right count'): {line!r}")
        merges.append(f"{fields[0]} {fields[1]}\n")
    return io.StringIO("#version: 0.2\n" + "".join(merges))


class BPEApplier:
    def __init__(self, codes_path, separator: str = "@@"):
        self._bpe = BPE(read_codes(codes_path), separator=separator)

    def __call__(self, lines: Iterable[str]) -> List[str]:
        return [self._bpe.process_line(line) for line in lines]


def apply_bpe_lines(args):
    """Pool-friendly: (codes_path, lines) -> segmented lines."""
    codes_path, lines = args
    return BPEApplier(Path(codes_path))(lines)

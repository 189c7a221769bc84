"""Joint BPE with subword-nmt: learned on the training text of both languages,
applied to every split. Codes in fastBPE's format (``left right count`` per
line, as the reference's ``bpe50k.codes``) are applied too, with the same
result as fastBPE: both merge the lowest-ranked pair first and mark a word's
end by ``</w>`` on its last symbol (subword-nmt's codes version 0.2)."""

import hashlib
import io
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, List

from subword_nmt.apply_bpe import BPE
from subword_nmt.learn_bpe import learn_bpe

from .corpus import CorpusError

SUBWORD_NMT_HEADER = "#version: 0.2\n"


def learn_joint_bpe(corpora: Iterable[Iterable[str]], codes_path, merges: int) -> int:
    """Learns up to ``merges`` merge operations on the word counts of all
    corpora together (one codes file shared by both languages); returns how
    many it learned: fewer when no pair of symbols occurs twice any more, 0
    when none does."""
    counts = Counter()
    for lines in corpora:
        for line in lines:
            counts.update(line.split())
    if not any(len(word) > 1 for word in counts):  # subword-nmt fails on a text without pairs
        Path(codes_path).write_text(SUBWORD_NMT_HEADER, encoding="utf-8")
        return 0
    # subword-nmt reads a "word count" dictionary when is_dict=True: counting
    # once here avoids concatenating the corpora into a temporary file.
    vocab = io.StringIO("".join(f"{w} {c}\n" for w, c in counts.items()))
    with open(codes_path, "w", encoding="utf-8") as out:
        learn_bpe(vocab, out, merges, min_frequency=2, is_dict=True)
    return Path(codes_path).read_text(encoding="utf-8").count("\n") - 1  # the header


def read_codes(codes_path) -> io.StringIO:
    """The codes as subword-nmt reads them; fastBPE codes lose their counts
    and gain the version-0.2 header (without it subword-nmt would treat
    ``</w>`` as a separate symbol, version 0.1). Raises CorpusError naming the
    file and line of anything subword-nmt would refuse (it exits the process,
    which in a worker of a pool hangs the run)."""
    path = Path(codes_path)
    if not path.is_file():
        raise CorpusError(f"{path}: {'not a file' if path.exists() else 'no such file'} (BPE codes)")
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text (byte {e.start}): not a BPE codes file") from None
    header = lines[0].startswith("#version")
    if header and lines[0] not in ("#version: 0.1", "#version: 0.2"):
        raise CorpusError(f"{path}:1: not a subword-nmt codes version (0.1 or 0.2): {lines[0]!r}")
    merges = lines[1:] if header else lines
    if not any(merges):
        raise CorpusError(f"{path}: no BPE merges in it")
    fastbpe = not header and len(lines[0].split(" ")) == 3
    out = []
    for number, line in enumerate(merges, 2 if header else 1):
        fields = line.strip("\r ").split(" ")
        if fastbpe and (len(fields) != 3 or not fields[2].isdigit()):
            raise CorpusError(f"{path}:{number}: not a fastBPE merge ('left right count'): {line!r}")
        if not fastbpe and len(fields) != 2:
            raise CorpusError(f"{path}:{number}: not a subword-nmt merge ('left right'): {line!r}")
        out.append(f"{fields[0]} {fields[1]}\n")
    # subword-nmt's codes keep their header (none: version 0.1)
    head = lines[0] + "\n" if header else SUBWORD_NMT_HEADER if fastbpe else ""
    return io.StringIO(head + "".join(out))


class BPEApplier:
    def __init__(self, codes_path, separator: str = "@@"):
        self._bpe = BPE(read_codes(codes_path), separator=separator)

    def __call__(self, lines: Iterable[str]) -> List[str]:
        return [self._bpe.process_line(line) for line in lines]


@lru_cache(maxsize=4)
def _applier(codes_path: str, digest: str) -> BPEApplier:
    return BPEApplier(Path(codes_path))


def apply_bpe_lines(args):
    """Pool-friendly: (codes_path, lines) -> segmented lines. The codes are
    parsed once per process and codes file (by content: a rerun may rewrite
    the same path), not once per chunk of lines."""
    codes_path, lines = args
    digest = hashlib.sha1(Path(codes_path).read_bytes()).hexdigest()
    return _applier(str(codes_path), digest)(lines)

"""Reading raw parallel corpora and image order files, with checks that name
the file and line of every problem."""

import gzip
import zlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..errors import InputError

GZIP_MAGIC = b"\x1f\x8b"


class CorpusError(InputError):
    """Bad input data; the message starts with ``file:line:`` where it can."""


def open_binary(path):
    """Opens a plain or gzip-compressed file; gzip is recognised by content."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def iter_lines(path, allow_empty: bool = False) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or gzipped), one at a time,
    without line endings: a corpus of any size in constant memory.

    Raises CorpusError naming the file and line on undecodable bytes and,
    unless ``allow_empty``, on empty or blank lines.
    """
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(
                        f"{path}:{lineno}: not valid UTF-8 (byte {e.start} of the "
                        f"line: {raw[e.start:e.start + 4]!r})"
                    ) from None
                if not allow_empty and not line.strip():
                    raise CorpusError(f"{path}:{lineno}: empty line")
                yield line
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise CorpusError(f"{path}: no such file") from None
        raise CorpusError(f"{path}: cannot be read ({e})") from None


def read_lines(path, allow_empty: bool = False) -> List[str]:
    """All lines of a file, as ``iter_lines`` reads them, in a list."""
    return list(iter_lines(path, allow_empty))


def _count_mismatch(counts: Dict[str, int]) -> CorpusError:
    """The error for files (path -> line count) of unequal length: the first
    line without a partner, in the longer of the first file and the other."""
    (first_path, first_n), *others = counts.items()
    path, n = next((p, n) for p, n in others if n != first_n)
    (short, short_n), (long_, long_n) = sorted([(first_path, first_n), (path, n)], key=lambda x: x[1])
    return CorpusError(
        f"{long_}:{short_n + 1}: line has no counterpart in {short} "
        f"({long_} has {long_n} lines, {short} has {short_n})"
    )


def check_parallel(files: Dict[str, Sequence]) -> None:
    """Raises CorpusError unless every file (path -> lines) has as many lines
    as the first one; the message names the first line without a partner."""
    counts = {path: len(lines) for path, lines in files.items()}
    if len(set(counts.values())) > 1:
        raise _count_mismatch(counts)


_END = object()  # a file's end, in iter_parallel


def iter_parallel(files: Dict[str, Iterable[str]]) -> Iterator[Tuple[str, ...]]:
    """The files' lines side by side (path -> its lines, e.g. ``iter_lines``),
    streamed; when one file ends before another, CorpusError as
    ``check_parallel`` words it (the longer files are counted to their end)."""
    paths = list(files)
    iterators = [iter(lines) for lines in files.values()]
    count = 0
    while True:
        row = []
        for it in iterators:
            line = next(it, _END)
            row.append(line)
        if all(line is _END for line in row):
            return
        if any(line is _END for line in row):
            counts = {p: count + (line is not _END) + sum(1 for _ in it)
                      for p, line, it in zip(paths, row, iterators)}  # fmt: skip
            raise _count_mismatch(counts)
        count += 1
        yield tuple(row)


def image_file_name(order_entry: str) -> str:
    """The image file name of an order-file entry: COCO entries of Multi30k's
    test_2017_mscoco carry a caption id (``COCO_..._000000117071.jpg#367178``)."""
    return order_entry.split("#", 1)[0]


def iter_order_file(path) -> Iterator[str]:
    """Image names of an order file (line i = sentence pair i), without the
    COCO ``#caption`` suffix, one at a time; whitespace around a name is an
    error."""
    for lineno, name in enumerate(iter_lines(path), start=1):
        if name != name.strip() or any(c.isspace() for c in name):
            raise CorpusError(f"{path}:{lineno}: image name contains whitespace: {name!r}")
        yield image_file_name(name)


def read_order_file(path) -> List[str]:
    """All the names ``iter_order_file`` reads, in a list."""
    return list(iter_order_file(path))


def find_text_file(directory, split: str, lang: str) -> Optional[Path]:
    """``{split}.{lang}`` or ``{split}.{lang}.gz`` in directory, if present;
    both at once is an error (which one is meant?)."""
    found = [p for p in (Path(directory) / f"{split}.{lang}", Path(directory) / f"{split}.{lang}.gz") if p.is_file()]
    if len(found) > 1:
        raise CorpusError(f"{found[0]}: {found[1].name} is there too; keep one of them")
    return found[0] if found else None


def discover_splits(directory, src: str, tgt: str) -> List[str]:
    """Split names that have a source and a target file in directory. A split
    with only one of them is an error naming the missing file: dropping it
    would lose that split without a word."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorpusError(f"{directory}: {'not a folder' if directory.exists() else 'no such folder'}")
    splits = set()
    for path in directory.iterdir():
        stem = path.name[:-3] if path.name.endswith(".gz") else path.name
        for lang in (src, tgt):
            if stem.endswith("." + lang) and len(stem) > len(lang) + 1 and path.is_file():
                splits.add(stem[: -len(lang) - 1])
    for split in sorted(splits):
        # find_text_file refuses a split with both .LANG and .LANG.gz
        files = {lang: find_text_file(directory, split, lang) for lang in (src, tgt)}
        for lang, path in files.items():
            if path is None:
                present = next(p for p in files.values() if p is not None)
                raise CorpusError(
                    f"{directory / f'{split}.{lang}'}: no such file (nor .gz), but {present} is there: every "
                    f"split needs both languages (or choose the splits to prepare with --splits)"
                )
    # train first, then the rest in a stable order
    return sorted(splits, key=lambda s: (s != "train", s))

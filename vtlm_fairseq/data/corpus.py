"""Reading raw parallel corpora and image order files, with checks that name
the file and line of every problem."""

import gzip
import os
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InputError

GZIP_MAGIC = b"\x1f\x8b"


class CorpusError(InputError):
    """Bad input data; the message starts with ``file:line:`` where it can."""


def open_binary(path):
    """Opens a plain or gzip-compressed file; gzip is recognised by content."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def read_lines(path, allow_empty: bool = False) -> List[str]:
    """All lines of a UTF-8 text file (plain or gzipped), without line endings.

    Raises CorpusError naming the file and line on undecodable bytes and,
    unless ``allow_empty``, on empty or blank lines.
    """
    lines = []
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
                lines.append(line)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise CorpusError(f"{path}: no such file") from None
        raise CorpusError(f"{path}: cannot be read ({e})") from None
    return lines


def check_parallel(files: Dict[str, Sequence]) -> None:
    """Raises CorpusError unless every file (path -> lines) has as many lines
    as the first one; the message names the first line without a partner."""
    items = list(files.items())
    first_path, first_lines = items[0]
    for path, lines in items[1:]:
        if len(lines) == len(first_lines):
            continue
        short, long_ = sorted(
            [(first_path, len(first_lines)), (path, len(lines))], key=lambda x: x[1]
        )
        raise CorpusError(
            f"{long_[0]}:{short[1] + 1}: line has no counterpart in {short[0]} "
            f"({long_[0]} has {long_[1]} lines, {short[0]} has {short[1]})"
        )


def image_file_name(order_entry: str) -> str:
    """The image file name of an order-file entry: COCO entries of Multi30k's
    test_2017_mscoco carry a caption id (``COCO_..._000000117071.jpg#367178``)."""
    return order_entry.split("#", 1)[0]


def read_order_file(path) -> List[str]:
    """Image names of an order file (line i = sentence pair i), without the
    COCO ``#caption`` suffix; whitespace around a name is an error."""
    names = read_lines(path)
    for lineno, name in enumerate(names, start=1):
        if name != name.strip() or any(c.isspace() for c in name):
            raise CorpusError(f"{path}:{lineno}: image name contains whitespace: {name!r}")
    return [image_file_name(n) for n in names]


def find_text_file(directory, split: str, lang: str) -> Optional[Path]:
    """``{split}.{lang}`` or ``{split}.{lang}.gz`` in directory, if present."""
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def discover_splits(directory, src: str, tgt: str) -> List[str]:
    """Split names that have both a source and a target file in directory."""
    splits = set()
    for name in os.listdir(directory):
        stem = name[:-3] if name.endswith(".gz") else name
        for lang in (src, tgt):
            if stem.endswith("." + lang):
                split = stem[: -len(lang) - 1]
                if find_text_file(directory, split, src) and find_text_file(
                    directory, split, tgt
                ):
                    splits.add(split)
    # train first, then the rest in a stable order
    return sorted(splits, key=lambda s: (s != "train", s))

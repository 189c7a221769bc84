"""Conceptual Captions En-De as the paper distributes it
(``cc-en-de.tsv.{train,valid,test}``: image id, image URL, English caption
(tokenised), German caption (machine-translated, not tokenised)): reading
with per-line problems named ``file:line``, and filtering each split to the
pairs whose image was downloaded (and has features), written as raw text and
image lists in Multi30k's layout for ``vtlm-prepare``.

Many URLs are dead, so filtering keeps each pair in its original split and
only drops lines; en, de and the image list stay aligned line by line."""

import json
import logging
import os
import re
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Container, Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from ..text.corpus import CorpusError, open_binary

logger = logging.getLogger(__name__)

TSV_COLUMNS = ("id", "url", "English", "German")
CC_SPLITS = ("train", "valid", "test")
FILTER_REPORT = "filter_report.json"  # in a filter output: what vtlm-cc prepare reads
# an id names a file: no separators, no leading dot, nothing a shell mangles
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
# a split names files here and in the data-bin (train.en-de.en.bin): no dots
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SHOWN_PROBLEMS = 20  # per-line problems logged one by one; the rest counted


@dataclass(frozen=True)
class CaptionPair:
    image_id: str
    url: str
    en: str
    de: str
    path: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class TsvProblem:
    path: str
    line: int
    reason: str
    image_id: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def _clean_caption(text: str) -> str:
    # all whitespace (line separators included) to single spaces: a caption
    # is one line of every file written from it
    return " ".join(text.split())


def _url_problem(url: str) -> Optional[str]:
    if not url or any(c.isspace() for c in url):
        return f"bad URL {url!r}: empty or contains whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # raises on a bad port
    except ValueError as e:
        return f"bad URL {url!r}: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"bad URL {url!r}: not http(s)://host/..."
    return None


def check_tsv_path(path) -> None:
    """CorpusError unless there is a file at ``path`` (before slow work)."""
    if os.path.isdir(path):
        raise CorpusError(f"{path}: is a folder, not a caption TSV")
    if not os.path.exists(path):
        raise CorpusError(f"{path}: no such file")


class CaptionTsvReader:
    """Reads caption TSVs one after the other. It remembers every image id
    across files, because the image file is named by the id: an id that comes
    back with another URL is a problem (the first URL keeps the id), one that
    comes back with the same URL is the same image and fine."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self._url_of_id: Dict[str, int] = {}  # id -> crc32 of its URL (memory: millions of ids)

    def read(self, path) -> Iterator[Union[CaptionPair, TsvProblem]]:
        """Yields a CaptionPair per good line and a TsvProblem per bad one
        (raises CorpusError at the first bad one when strict). A file without
        any good line is a CorpusError at its end: an empty file, or the
        wrong file (another format, another column layout)."""
        path = str(path)
        check_tsv_path(path)
        try:
            f = open_binary(path)
        except OSError as e:
            raise CorpusError(f"{path}: cannot be read ({e.strerror or e})") from None
        lineno, pairs, first_problem = 0, 0, None
        with f:
            try:
                for lineno, raw in enumerate(f, start=1):
                    item = self._parse(path, lineno, raw)
                    if isinstance(item, TsvProblem):
                        if self.strict:
                            raise CorpusError(str(item))
                        first_problem = first_problem or item
                    else:
                        pairs += 1
                    yield item
            except (OSError, EOFError, zlib.error) as e:  # a cut or corrupt .gz
                raise CorpusError(f"{path}:{lineno + 1}: cannot be read ({e})") from None
        if lineno == 0:
            raise CorpusError(f"{path}: empty file; expected lines of {', '.join(TSV_COLUMNS)}, tab-separated")
        if pairs == 0:
            raise CorpusError(f"{path}: no usable line in {lineno}; the first: {first_problem}")

    def _parse(self, path: str, lineno: int, raw: bytes) -> Union[CaptionPair, TsvProblem]:
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return TsvProblem(path, lineno, f"not valid UTF-8 (byte {e.start} of the line: {raw[e.start:e.start + 4]!r})")
        if not line.strip():
            return TsvProblem(path, lineno, "empty line")
        columns = line.split("\t")
        if len(columns) != len(TSV_COLUMNS):
            return TsvProblem(
                path, lineno,
                f"expected {len(TSV_COLUMNS)} tab-separated columns ({', '.join(TSV_COLUMNS)}), found {len(columns)}",
            )  # fmt: skip
        image_id, url, en, de = (c.strip() for c in columns)
        if not image_id:
            return TsvProblem(path, lineno, "empty image id")
        if not _SAFE_ID.fullmatch(image_id):
            return TsvProblem(
                path, lineno, f"image id {image_id!r} cannot name a file (letters, digits, '_', '-', '.')", image_id
            )
        problem = _url_problem(url)
        if problem:
            return TsvProblem(path, lineno, problem, image_id)
        en, de = _clean_caption(en), _clean_caption(de)
        for caption, language in ((en, "English"), (de, "German")):
            if not caption:
                return TsvProblem(path, lineno, f"empty {language} caption", image_id)
        url_crc = zlib.crc32(url.encode("utf-8"))
        first = self._url_of_id.setdefault(image_id, url_crc)
        if first != url_crc:
            return TsvProblem(path, lineno, f"image id {image_id!r} was given another URL before", image_id)
        return CaptionPair(image_id, url, en, de, path, lineno)


class ProblemLog:
    """Logs the first per-line problems one by one and counts all of them."""

    def __init__(self, shown: int = SHOWN_PROBLEMS):
        self.shown = shown
        self.count = 0

    def __call__(self, problem: TsvProblem) -> None:
        self.count += 1
        if self.count <= self.shown:
            logger.warning("%s", problem)
        elif self.count == self.shown + 1:
            logger.warning("more malformed lines; only counted from here on")


def split_name_of(path) -> str:
    """``cc-en-de.tsv.train`` -> train, ``valid.tsv.gz`` -> valid."""
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return name
    return stem if suffix == "tsv" else suffix


def parse_split_args(specs: List[str]) -> Dict[str, str]:
    """``[NAME=]PATH`` arguments -> {split name: path}, in the given order."""
    splits: Dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or os.path.exists(spec):
            name, path = split_name_of(spec), spec
        if not _SPLIT_NAME.fullmatch(name):
            raise CorpusError(
                f"{spec}: split name {name!r} is not letters, digits, '_' or '-' (name it: NAME=PATH)"
            )
        if name in splits:
            raise CorpusError(f"split '{name}' given twice ({splits[name]} and {path}); name one with NAME=PATH")
        splits[name] = path
    return splits


# -- filtering ----------------------------------------------------------------

@dataclass
class SplitFilterStats:
    split: str
    tsv: str
    lines: int = 0
    kept: int = 0
    malformed: int = 0
    no_image: int = 0  # well-formed, but no image file
    no_features: int = 0  # an image file, but not in the feature store

    @property
    def lost(self) -> int:
        return self.lines - self.kept

    def as_dict(self) -> dict:
        return {**asdict(self), "lost": self.lost}


@dataclass
class FilterResult:
    out_dir: str
    splits: Dict[str, SplitFilterStats] = field(default_factory=dict)
    images: int = 0  # distinct images over all splits

    def as_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "images": self.images,
            "splits": {name: s.as_dict() for name, s in self.splits.items()},
        }


class _SplitWriter:
    """The three aligned files of a split, written under temporary names and
    renamed together at the end, so a failed run leaves no half split."""

    def __init__(self, out_dir: Path, split: str, src: str = "en", tgt: str = "de"):
        self.final = [
            out_dir / "raw" / f"{split}.{src}",
            out_dir / "raw" / f"{split}.{tgt}",
            out_dir / "image_splits" / f"{split}.txt",
        ]
        self.tmp = [p.with_name(p.name + ".tmp") for p in self.final]
        for p in self.tmp:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.files = [open(p, "w", encoding="utf-8") for p in self.tmp]

    def write(self, en: str, de: str, image: str) -> None:
        for f, text in zip(self.files, (en, de, image)):
            f.write(text + "\n")

    def close(self) -> None:
        for f in self.files:
            f.close()

    def commit(self) -> None:
        for tmp, final in zip(self.tmp, self.final):
            os.replace(tmp, final)

    def discard(self) -> None:
        self.close()
        for p in self.tmp:
            p.unlink(missing_ok=True)


def filter_splits(
    tsvs: Mapping[str, str],
    out_dir,
    images: Mapping[str, str],
    features: Optional[Container[str]] = None,
    strict: bool = False,
    force: bool = False,
    missing_reasons: Optional[Mapping[str, str]] = None,
) -> FilterResult:
    """Writes, for every split (name -> TSV), ``OUT/raw/{split}.{en,de}`` and
    ``OUT/image_splits/{split}.txt`` with the pairs whose image is available:
    ``images`` maps an image id to its file name; with ``features`` that
    name must also be in the feature store. Also writes ``OUT/images.txt``
    (every image once, the extractor's list), ``OUT/dropped.tsv`` (each
    dropped line: source, id, reason) and ``OUT/filter_report.json``.

    ``missing_reasons`` (id -> why it has no image, from the download
    records) makes a line dropped for want of an image say why, e.g. ``no
    image (failed_to_download: HTTP Error 404: Not Found)``; an id the
    records do not know is ``no image (not downloaded)``."""
    out_dir = Path(out_dir)
    owned = [out_dir / "raw", out_dir / "image_splits"]
    if any(d.is_dir() and any(d.iterdir()) for d in owned):
        if not force:
            raise CorpusError(f"{out_dir} already holds filtered splits; use --force to rewrite them")
        # a split left from an earlier run would be prepared with the new ones
        for d in owned:
            shutil.rmtree(d, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / FILTER_REPORT
    result = FilterResult(str(out_dir))
    reader = CaptionTsvReader(strict=strict)
    problems = ProblemLog()
    used_images: Dict[str, None] = {}  # ordered set
    writers: List[_SplitWriter] = []
    dropped_tmp = out_dir / "dropped.tsv.tmp"
    try:
        with open(dropped_tmp, "w", encoding="utf-8") as dropped:
            for split, tsv in tsvs.items():
                stats = SplitFilterStats(split, str(tsv))
                writer = _SplitWriter(out_dir, split)
                writers.append(writer)
                for item in reader.read(tsv):
                    stats.lines += 1
                    reason = None
                    if isinstance(item, TsvProblem):
                        stats.malformed += 1
                        problems(item)
                        dropped.write(f"{item.path}:{item.line}\t{item.image_id or ''}\t{item.reason}\n")
                        continue
                    name = images.get(item.image_id)
                    if name is None:
                        stats.no_image += 1
                        reason = "no image"
                        if missing_reasons is not None:
                            reason += f" ({missing_reasons.get(item.image_id, 'not downloaded')})"
                    elif features is not None and name not in features:
                        stats.no_features += 1
                        reason = f"{name} not in the feature store"
                    if reason:
                        dropped.write(f"{item.source}\t{item.image_id}\t{reason}\n")
                        continue
                    writer.write(item.en, item.de, name)
                    used_images[name] = None
                    stats.kept += 1
                writer.close()
                result.splits[split] = stats
                _log_split(stats)
        for writer in writers:
            writer.commit()
    except BaseException:
        for writer in writers:
            writer.discard()
        dropped_tmp.unlink(missing_ok=True)
        raise
    os.replace(dropped_tmp, out_dir / "dropped.tsv")
    with open(out_dir / "images.txt", "w", encoding="utf-8") as f:
        f.writelines(name + "\n" for name in used_images)
    result.images = len(used_images)
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(result.as_dict(), f, indent=2)
    return result


def _log_split(stats: SplitFilterStats) -> None:
    log = logger.warning if stats.kept == 0 else logger.info
    log(
        "split %s: kept %d of %d pairs, lost %d (%d malformed lines, %d without image, %d without features)",
        stats.split, stats.kept, stats.lines, stats.lost, stats.malformed, stats.no_image, stats.no_features,
    )  # fmt: skip


def read_split_tsvs(tsvs: Mapping[str, str], strict: bool = False) -> Iterator[Tuple[str, Union[CaptionPair, TsvProblem]]]:
    """(split, item) for every line of every TSV, through one reader (ids are
    checked across splits)."""
    reader = CaptionTsvReader(strict=strict)
    for split, tsv in tsvs.items():
        for item in reader.read(tsv):
            yield split, item

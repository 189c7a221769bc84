"""Raw parallel text (+ image lists) -> fairseq data-bin, the paper's way:
Moses normalisation and tokenisation, lowercasing and accent stripping, joint
BPE, ``fairseq-preprocess`` with a joined dictionary, and one ``{split}.order``
file per split next to the binarised text."""

import io
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

from .bpe import apply_bpe_lines, learn_joint_bpe, read_codes
from .corpus import (
    CorpusError,
    discover_splits,
    find_text_file,
    iter_lines,
    iter_order_file,
    iter_parallel,
    read_lines,
)
from .tokenization import moses_languages, normalize_pretokenized_lines, tokenize_lines

logger = logging.getLogger(__name__)

# Multi30k calls its validation split "val"; fairseq expects "valid".
DEFAULT_RENAMES = {"val": "valid"}
# split names and language codes become parts of file names (and fairseq's
# comma-separated --testpref): no separators, no commas
NAME = re.compile(r"[\w-]+")
LANGUAGE = re.compile(r"[A-Za-z0-9_]+")
# what a run writes into the data-bin; --force removes these (and tok/, bpe/), nothing else
OUTPUT_PATTERNS = ("dict.*.txt", "*.bin", "*.idx", "*.order", "bpe.codes", "preprocess.log", "prepare.json")


@dataclass
class PrepareConfig:
    raw_dir: str
    dest_dir: str
    src: str = "en"
    tgt: str = "de"
    # split names to prepare, "name" or "name=raw_name"; empty = all found
    splits: List[str] = field(default_factory=list)
    image_splits_dir: Optional[str] = None
    lowercase: bool = True
    strip_accents: bool = True
    # languages whose text is tokenised already (Conceptual Captions' English):
    # no Moses normalisation or tokenisation, the rest of the pipeline as usual
    pretokenized: List[str] = field(default_factory=list)
    bpe_merges: int = 10000
    bpe_codes: Optional[str] = None  # reuse existing subword-nmt or fastBPE codes
    # binarise with this joined dictionary (a converted checkpoint's dict.txt)
    # instead of one built from train
    dictionary: Optional[str] = None
    workers: int = max(1, min(4, os.cpu_count() or 1))
    force: bool = False
    # lines per chunk handed to a worker (the output does not depend on it)
    chunk_lines: int = 4000


@dataclass
class SplitSource:
    name: str  # name in the data-bin
    text: Dict[str, Path]  # lang -> raw file
    order: Optional[Path]


def resolve_splits(cfg: PrepareConfig) -> List[SplitSource]:
    if cfg.splits:
        pairs = [s.split("=", 1) if "=" in s else (s, s) for s in cfg.splits]
        for (name, raw_name), given in zip(pairs, cfg.splits):
            if not NAME.fullmatch(name) or not raw_name:
                raise CorpusError(
                    f"--splits {given!r}: expected NAME or NAME=RAW_NAME, NAME of letters, digits, '_' or '-'"
                )
    else:
        found = discover_splits(cfg.raw_dir, cfg.src, cfg.tgt)
        pairs = [(DEFAULT_RENAMES.get(s, s), s) for s in found]
    if not pairs:
        raise CorpusError(
            f"{cfg.raw_dir}: no split has both a .{cfg.src} and a .{cfg.tgt} file"
        )
    names = [name for name, _ in pairs]
    if "train" not in names:
        raise CorpusError(
            f"{cfg.raw_dir}: no 'train' split for the dictionary and BPE (found "
            f"{names}); name one with --splits train=RAW_NAME"
        )
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raw_names = [raw for name, raw in pairs if name == twice[0]]
        raise CorpusError(f"split {twice[0]!r} comes from {' and '.join(raw_names)}: name them apart with --splits")
    sources = []
    for name, raw_name in pairs:
        text = {}
        for lang in (cfg.src, cfg.tgt):
            path = find_text_file(cfg.raw_dir, raw_name, lang)
            if path is None:
                missing = Path(cfg.raw_dir) / f"{raw_name}.{lang}"
                raise CorpusError(f"{missing}: no such file (nor .gz) for split {name}")
            text[lang] = path
        order = None
        if cfg.image_splits_dir:
            order = Path(cfg.image_splits_dir) / f"{raw_name}.txt"
            if not order.is_file():
                raise CorpusError(f"{order}: no image list for split {raw_name}")
        sources.append(SplitSource(name, text, order))
    return sources


def _batches(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    it = iter(lines)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _ordered_map(pool, fn, const: tuple, lines: Iterable[str], chunk_lines: int, workers: int) -> Iterator[str]:
    """fn((*const, chunk)) over the lines in chunks, results in input order,
    with at most two chunks per worker in flight (Pool.imap would read the
    whole input ahead into its task queue): the output is the same for any
    number of workers. Without a pool, in this process."""
    if pool is None:
        for batch in _batches(lines, chunk_lines):
            yield from fn((*const, batch))
        return
    pending: deque = deque()
    for batch in _batches(lines, chunk_lines):
        pending.append(pool.apply_async(fn, ((*const, batch),)))
        if len(pending) >= 2 * workers:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _write_lines(path: Path, lines: Iterable[str], source: Optional[Path] = None) -> int:
    """Writes the lines (one per line), returns how many; with ``source``,
    an empty line is an error naming that file and line (text that
    tokenisation emptied)."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for count, line in enumerate(lines, start=1):
            if source is not None and not line:
                raise CorpusError(f"{source}:{count}: nothing left after tokenisation")
            f.write(line + "\n")
    return count


def check_dictionary(path) -> int:
    """The number of symbols of a fairseq dictionary file; raises CorpusError
    naming the file and line that fairseq's own reader (fed one line at a
    time) refuses, where fairseq would name neither."""
    from fairseq.data import Dictionary

    if not Path(path).is_file():
        raise CorpusError(f"{path}: no such dictionary file")
    dictionary, first_line = Dictionary(), {}
    for lineno, line in enumerate(read_lines(path), start=1):
        try:
            dictionary.add_from_file(io.StringIO(line))
        except ValueError:
            raise CorpusError(f"{path}:{lineno}: not a dictionary line ('SYMBOL COUNT'): {line!r}") from None
        except RuntimeError:  # a symbol listed twice (no #fairseq:overwrite flag)
            word = line.rstrip().rsplit(" ", 1)[0]
            where = f"line {first_line[word]}" if word in first_line else "fairseq adds it itself"
            raise CorpusError(f"{path}:{lineno}: {word!r} is there already ({where})") from None
        first_line.setdefault(dictionary.symbols[-1], lineno)  # each line appends its symbol
    if not first_line:
        raise CorpusError(f"{path}: empty dictionary")
    return len(dictionary) - dictionary.nspecial


def check_config(cfg: PrepareConfig) -> None:
    """Every option and input path, before anything is read or written."""
    for option, lang in (("--src", cfg.src), ("--tgt", cfg.tgt)):
        if not LANGUAGE.fullmatch(lang):
            raise CorpusError(f"{option} {lang!r}: a language code is letters, digits or '_' (it names the files)")
    if cfg.src == cfg.tgt:
        raise CorpusError(f"--src and --tgt are both {cfg.src!r}: a parallel corpus needs two languages")
    for lang in {cfg.src, cfg.tgt} - set(cfg.pretokenized) - set(moses_languages()):
        logger.warning("%s: no Moses rules for this language; its text is tokenised by the generic ones", lang)
    if set(cfg.pretokenized) - {cfg.src, cfg.tgt}:
        raise CorpusError(f"pretokenized languages {cfg.pretokenized} must be {cfg.src} or {cfg.tgt}")
    if cfg.workers < 1:
        raise CorpusError(f"--workers {cfg.workers}: at least 1 process is needed")
    if cfg.chunk_lines < 1:
        raise CorpusError(f"chunk_lines {cfg.chunk_lines}: at least 1 line per chunk is needed")
    if cfg.bpe_codes:
        read_codes(cfg.bpe_codes)
    elif cfg.bpe_merges < 1:
        raise CorpusError(f"--bpe-merges {cfg.bpe_merges}: at least 1 merge is needed (or give --bpe-codes)")
    if cfg.dictionary:
        check_dictionary(cfg.dictionary)
    dest = Path(cfg.dest_dir)
    if dest.exists() and not dest.is_dir():
        raise CorpusError(f"{dest}: not a folder (dest_dir)")
    for option, folder in (("raw_dir", cfg.raw_dir), ("--image-splits", cfg.image_splits_dir)):
        if folder and not Path(folder).is_dir():
            raise CorpusError(f"{folder}: {'not a folder' if Path(folder).exists() else 'no such folder'} ({option})")
        if folder and dest.is_dir() and dest.samefile(folder):  # --force would remove the input
            raise CorpusError(f"{dest}: the output folder is the input folder ({option}); choose another dest_dir")
    if (dest / f"dict.{cfg.src}.txt").exists() and not cfg.force:
        raise CorpusError(f"{dest} already holds a prepared corpus; use --force to rebuild it")


def _remove_outputs(dest: Path) -> None:
    """What an earlier run wrote (--force), and nothing else of the folder."""
    for sub in ("tok", "bpe"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    for pattern in OUTPUT_PATTERNS:
        for path in dest.glob(pattern):
            if path.is_file():
                path.unlink()


def _check_split(cfg: PrepareConfig, split: SplitSource) -> int:
    """Reads a split's files side by side (text of both languages, image
    list) with every check of the input; returns its number of pairs."""
    files = {str(split.text[lang]): iter_lines(split.text[lang]) for lang in (cfg.src, cfg.tgt)}
    if split.order is not None:
        files[str(split.order)] = iter_order_file(split.order)
    pairs = sum(1 for _ in iter_parallel(files))
    if not pairs:
        raise CorpusError(f"{split.text[cfg.src]}: empty file (split {split.name})")
    logger.info("split %s: %d sentence pairs%s", split.name, pairs, f", images from {split.order}" if split.order else "")
    return pairs


def prepare(cfg: PrepareConfig) -> dict:
    start = time.time()
    dest = Path(cfg.dest_dir)
    check_config(cfg)
    sources = resolve_splits(cfg)

    # Check everything before any slow step (and before --force removes the
    # old data-bin): streamed, a pass over every file, nothing held
    pairs = {s.name: _check_split(cfg, s) for s in sources}
    if cfg.force and dest.is_dir():
        _remove_outputs(dest)

    for sub in ("tok", "bpe"):
        (dest / sub).mkdir(parents=True, exist_ok=True)

    pool = Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        for s in sources:
            for lang in (cfg.src, cfg.tgt):
                tokenize = normalize_pretokenized_lines if lang in cfg.pretokenized else tokenize_lines
                lines = _ordered_map(pool, tokenize, (lang, cfg.lowercase, cfg.strip_accents),
                                     iter_lines(s.text[lang]), cfg.chunk_lines, cfg.workers)  # fmt: skip
                _write_lines(dest / "tok" / f"{s.name}.{lang}", lines, source=s.text[lang])
        logger.info("tokenised %d splits (%.1fs)", len(sources), time.time() - start)

        codes = dest / "bpe.codes"
        if cfg.bpe_codes:
            shutil.copyfile(cfg.bpe_codes, codes)
        else:
            train = [dest / "tok" / f"train.{lang}" for lang in (cfg.src, cfg.tgt)]
            learned = learn_joint_bpe([iter_lines(path) for path in train], codes, cfg.bpe_merges)
            if not learned:
                raise CorpusError(
                    f"{' and '.join(map(str, train))}: no pair of symbols occurs twice in the training text: "
                    "no BPE merge to learn (give more text, or codes with --bpe-codes)"
                )
            logger.info("learned %d joint BPE merges on train (of --bpe-merges %d)", learned, cfg.bpe_merges)
        for s in sources:
            for lang in (cfg.src, cfg.tgt):
                tok = iter_lines(dest / "tok" / f"{s.name}.{lang}")
                lines = _ordered_map(pool, apply_bpe_lines, (str(codes),), tok, cfg.chunk_lines, cfg.workers)
                _write_lines(dest / "bpe" / f"{s.name}.{lang}", lines)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    logger.info("applied BPE (%.1fs)", time.time() - start)

    _binarize(cfg, dest, [s.name for s in sources])

    for s in sources:
        if s.order is not None:
            _write_lines(dest / f"{s.name}.order", iter_order_file(s.order))

    manifest = {
        "config": asdict(cfg),
        "splits": {
            s.name: {
                "pairs": pairs[s.name],
                "text": {lang: str(Path(p).resolve()) for lang, p in s.text.items()},
                "order": str(Path(s.order).resolve()) if s.order else None,
            }
            for s in sources
        },
        "seconds": round(time.time() - start, 1),
    }
    with open(dest / "prepare.json", "w") as f:
        json.dump(manifest, f, indent=2)
    logger.info("prepared %s in %.1fs", dest, time.time() - start)
    return manifest


def _binarize(cfg: PrepareConfig, dest: Path, split_names: List[str]) -> None:
    """fairseq-preprocess with a joined dictionary learned on train. Every split
    other than train goes through --testpref (named test, test1, ...) and is
    renamed afterwards, so that any number of named test sets fit one folder."""
    from fairseq import options
    from fairseq_cli import preprocess

    others = [n for n in split_names if n != "train"]
    argv = [
        "--source-lang", cfg.src,
        "--target-lang", cfg.tgt,
        "--joined-dictionary",
        "--destdir", str(dest),
        "--workers", str(cfg.workers),
        "--dataset-impl", "mmap",
    ]  # fmt: skip
    argv += ["--trainpref", str(dest / "bpe" / "train")]
    if cfg.dictionary:
        argv += ["--srcdict", cfg.dictionary]
    if others:
        argv += ["--testpref", ",".join(str(dest / "bpe" / n) for n in others)]
    args = options.get_preprocessing_parser().parse_args(argv)
    handlers = list(preprocess.logger.handlers)
    try:
        preprocess.main(args)
    finally:  # main() adds a file handler on every call
        for h in preprocess.logger.handlers[len(handlers):]:
            h.close()
            preprocess.logger.removeHandler(h)
    pair = f"{cfg.src}-{cfg.tgt}"
    for k, name in enumerate(others):
        tmp = "test" if k == 0 else f"test{k}"
        for lang in (cfg.src, cfg.tgt):
            for ext in ("bin", "idx"):
                os.replace(
                    dest / f"{tmp}.{pair}.{lang}.{ext}",
                    dest / f"{name}.{pair}.{lang}.{ext}.renaming",
                )
    # two steps: a user split may itself be called "test1"
    for path in dest.glob("*.renaming"):
        os.replace(path, path.with_suffix(""))

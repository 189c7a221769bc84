"""vtlm-cc: Conceptual Captions En-De from the paper's TSVs to a data-bin:
download the images, filter the splits to what was downloaded (and
extracted), prepare the text."""

import argparse
import json
import logging
import math
import re
from pathlib import Path

from ..corpora.conceptual_captions import (
    CC_SPLITS,
    FILTER_REPORT,
    CaptionPair,
    ProblemLog,
    check_tsv_path,
    filter_splits,
    parse_split_args,
    read_split_tsvs,
)
from ..data.feature_store import open_store
from ..corpora.image_download import (
    FAILURE_REPORT,
    IMAGE_EXTENSIONS,
    DownloadConfig,
    DownloadJob,
    download_images,
    index_image_names,
    scan_image_dir,
)
from ..text.preparation import PrepareConfig, prepare
from ..errors import InputError
from ..output_paths import make_output_dir
from .command import run_command

logger = logging.getLogger("vtlm_fairseq.cc")

TSV_HELP = (
    "caption TSVs (id, url, English, German), as [NAME=]PATH; the split name "
    "is the file's last suffix (cc-en-de.tsv.train -> train) unless given"
)
_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line, as every other bad input (exit 2)."""

    def error(self, message):
        raise InputError(f"{self.prog}: {message} (see {self.prog} --help)")


def parse_size(text: str) -> int:
    """``16M``, ``500K``, ``1G`` or a plain number of bytes (at least 1)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)([KMG]?)B?", text.strip().upper())
    size = int(float(match[1]) * _SIZE_UNITS.get(match[2], 1)) if match else 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"not a size of at least 1 byte: {text!r} (e.g. 16M, 500K, 20000000)")
    return size


def format_size(size: int) -> str:
    """The inverse of parse_size where it divides evenly: 16777216 -> 16M."""
    for unit, factor in reversed(_SIZE_UNITS.items()):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _number(kind, minimum, strict=False):
    """An argparse type: a finite ``kind`` of at least ``minimum`` (above it
    when ``strict``)."""
    what = f"{'an integer' if kind is int else 'a number'} {'above' if strict else 'of at least'} {minimum}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    return parse


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
SECONDS = _number(float, 0)
POSITIVE_SECONDS = _number(float, 0, strict=True)


def get_parser():
    p = _Parser(
        prog="vtlm-cc",
        description=(
            "Conceptual Captions En-De (the paper's cc-en-de.tsv.{train,valid,test}) "
            "for VTLM pre-training: download the images, filter the splits to the "
            "pairs with an image (and features), prepare the text as vtlm-prepare does. "
            "Each subcommand prints its summary as JSON on stdout; logs go to stderr."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{download,filter,prepare}")
    dl_defaults = DownloadConfig(out_dir="")

    dl = sub.add_parser(
        "download",
        help="download the images of caption TSVs (concurrent, resumable)",
        description=(
            "Downloads each image of the TSVs to OUT/<id>.<ext> (extension from the "
            "bytes: jpg, png, gif, webp), checks that it is a complete image, and "
            f"reports every failure (id, url, reason) in OUT/{FAILURE_REPORT}. A rerun "
            "fetches only what is missing; permanent failures (404, not an image, too "
            "large, a redirect to anything but http(s)) are not tried again unless "
            "--retry-failed, transient ones (timeouts, 5xx, connection errors) are. "
            "Ctrl-C stops within --timeout seconds (exit status 130), keeping every "
            "image and report line written so far; a rerun continues."
        ),
    )
    dl.add_argument("tsvs", nargs="+", metavar="TSV", help=TSV_HELP)
    dl.add_argument("--out", required=True, dest="out_dir", help="image folder, created if needed (required)")
    dl.add_argument("--workers", type=POSITIVE_INT, default=dl_defaults.workers,
                    help="parallel downloads (default: %(default)s)")
    dl.add_argument("--timeout", type=POSITIVE_SECONDS, default=dl_defaults.timeout,
                    help="seconds per attempt: to connect, per wait, and for the whole transfer "
                    "(default: %(default)s)")
    dl.add_argument("--retries", type=COUNT, default=dl_defaults.retries,
                    help="further attempts after a timeout, 5xx, 408/429 or connection error (default: %(default)s)")
    dl.add_argument("--backoff", type=SECONDS, default=dl_defaults.backoff,
                    help="seconds before the first retry; doubled after each (default: %(default)s)")
    dl.add_argument("--max-bytes", type=parse_size, default=format_size(dl_defaults.max_bytes),
                    help="largest file accepted, in bytes or with K, M, G (default: %(default)s)")
    dl.add_argument("--max-redirects", type=COUNT, default=dl_defaults.max_redirects,
                    help="redirects followed per image, each to an http(s) URL (default: %(default)s)")
    dl.add_argument("--formats", nargs="+", choices=tuple(IMAGE_EXTENSIONS), default=list(dl_defaults.formats),
                    help=f"image formats accepted (default: {' '.join(dl_defaults.formats)}, those the feature "
                    "extractor decodes)")
    dl.add_argument("--user-agent", default=dl_defaults.user_agent,
                    help="User-Agent header of every request (default: %(default)r)")
    dl.add_argument("--report", help=f"failure report, JSON lines (default: OUT/{FAILURE_REPORT})")
    dl.add_argument("--retry-failed", action="store_true",
                    help="also retry earlier permanent failures (default: off)")
    dl.add_argument("--verify-existing", action="store_true",
                    help="re-check the images already there (reads every file) and replace broken ones "
                    "(default: off, a file there counts as downloaded)")
    dl.add_argument("--strict", action="store_true",
                    help="stop at the first malformed TSV line (default: off, such lines are counted and skipped)")
    dl.add_argument("--no-progress", action="store_true",
                    help="no progress bar (default: off, a bar on stderr when it is a terminal)")  # fmt: skip

    flt = sub.add_parser(
        "filter",
        help="keep the pairs whose image is there (and in a feature store)",
        description=(
            "Writes OUT/raw/{split}.{en,de} and OUT/image_splits/{split}.txt (the "
            "image file names, <id>.<ext>) for every TSV, keeping each pair in its "
            "split and dropping the lines that are malformed or whose image is "
            "missing (from --image-dir, or from --features when given). Also "
            "OUT/images.txt (every image once: the feature extractor's list), "
            "OUT/dropped.tsv (every dropped line and why) and "
            f"OUT/{FILTER_REPORT} (pairs lost per split)."
        ),
    )
    flt.add_argument("tsvs", nargs="+", metavar="TSV", help=TSV_HELP)
    flt.add_argument("--out", required=True, dest="out_dir", help="output folder, created if needed (required)")
    flt.add_argument("--image-dir",
                     help="the download folder, images named <id>.<ext> (default: none, the images of "
                     "--features count; give either or both)")
    flt.add_argument("--features", help="feature store (HDF5; or a folder, manifest or list of shards read as one): keep only images that are in it (default: none)")
    flt.add_argument("--strict", action="store_true",
                     help="stop at the first malformed TSV line (default: off, such lines are dropped)")
    flt.add_argument("--force", action="store_true",
                     help="rewrite an earlier output in OUT (default: off, refused)")  # fmt: skip

    defaults = PrepareConfig(raw_dir="", dest_dir="")
    prep = sub.add_parser(
        "prepare",
        help="filtered splits -> fairseq data-bin (as vtlm-prepare)",
        description=(
            "Runs vtlm-prepare on the output of 'filter' (FILTERED/raw, "
            "FILTERED/image_splits): the same normalisation, lowercasing, accent "
            "stripping, joint BPE and binarisation, except that the English side, "
            "tokenised already in the paper's TSV, is not tokenised again."
        ),
    )
    prep.add_argument("filtered_dir", help="output folder of 'vtlm-cc filter'")
    prep.add_argument("dest_dir", help="output data-bin folder")
    prep.add_argument("--pretokenized", nargs="*", default=["en"], metavar="LANG",
                      help="languages that are tokenised already (default: en; none: --pretokenized)")
    prep.add_argument("--no-lowercase", dest="lowercase", action="store_false",
                      help="keep the case (default: off, text is lowercased)")
    prep.add_argument("--keep-accents", dest="strip_accents", action="store_false",
                      help="keep accents (default: off, accents are stripped)")
    prep.add_argument("--bpe-merges", type=POSITIVE_INT, default=50000,
                      help="joint BPE merges learned on train (default: %(default)s, the paper's)")
    prep.add_argument("--bpe-codes", help="apply these BPE codes instead of learning (default: none, learn)")
    prep.add_argument("--dictionary",
                      help="binarise with this joined dictionary, as vtlm-prepare --dictionary "
                      "(default: none, built from train)")
    prep.add_argument("--workers", type=POSITIVE_INT, default=defaults.workers,
                      help="processes for tokenisation, BPE and binarisation (default: %(default)s)")
    prep.add_argument("--force", action="store_true",
                      help="rebuild an existing data-bin (default: off, refused)")  # fmt: skip
    return p


def _input_dir(path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: {'not a folder' if path.exists() else 'no such folder'} ({what})")
    return path


def _tsv_splits(specs) -> dict:
    """{split: TSV}, each TSV there before any slow work starts."""
    tsvs = parse_split_args(specs)
    for path in tsvs.values():
        check_tsv_path(path)
    return tsvs


def _download_jobs(tsvs, strict):
    for _, item in read_split_tsvs(tsvs, strict):
        if isinstance(item, CaptionPair):
            yield DownloadJob(item.image_id, item.url, item.source)


def run_download(args) -> dict:
    tsvs = _tsv_splits(args.tsvs)
    make_output_dir(args.out_dir)  # before the first pass: it takes a while
    # A first pass checks every line before any download starts and gives
    # the progress bar its total; reading millions of lines takes seconds.
    problems = ProblemLog()
    lines = {split: 0 for split in tsvs}
    jobs = 0
    for split, item in read_split_tsvs(tsvs, args.strict):
        lines[split] += 1
        if isinstance(item, CaptionPair):
            jobs += 1
        else:
            problems(item)
    for split, tsv in tsvs.items():
        logger.info("%s: %d lines (split %s)", tsv, lines[split], split)
    logger.info("%d images to check or fetch; %d malformed lines skipped", jobs, problems.count)
    cfg = DownloadConfig(
        out_dir=args.out_dir, workers=args.workers, timeout=args.timeout, retries=args.retries,
        backoff=args.backoff, max_bytes=args.max_bytes, max_redirects=args.max_redirects,
        formats=tuple(args.formats), user_agent=args.user_agent, report=args.report,
        retry_failed=args.retry_failed, verify_existing=args.verify_existing,
        progress=False if args.no_progress else None,
    )  # fmt: skip
    summary = download_images(_download_jobs(tsvs, args.strict), cfg, total=jobs)
    return {"malformed_lines": problems.count, **summary.as_dict()}


def run_filter(args) -> dict:
    if not args.image_dir and not args.features:
        raise InputError("give --image-dir, --features or both: the images that count as available")
    tsvs = _tsv_splits(args.tsvs)
    make_output_dir(args.out_dir)
    store = None
    if args.features:
        store = open_store(args.features, validate="none")  # one store, or shards read as one
    if args.image_dir:
        images = scan_image_dir(_input_dir(args.image_dir, "--image-dir"))
        logger.info("%s: %d images", args.image_dir, len(images))
    else:  # the store's names are the image file names
        images = index_image_names(store.names, args.features)
    if store is not None:
        logger.info("%s: %d images with features", args.features, len(store))
    result = filter_splits(tsvs, args.out_dir, images, features=store, strict=args.strict, force=args.force)
    missing = [s for s in CC_SPLITS if s not in result.splits]
    if missing:
        logger.info("no TSV for split(s) %s", ", ".join(missing))
    return result.as_dict()


def _check_filter_output(filtered: Path) -> None:
    """A filter output whose every split (from its report) holds pairs."""
    report_path = filtered / FILTER_REPORT
    if not report_path.is_file() or not all((filtered / sub).is_dir() for sub in ("raw", "image_splits")):
        raise InputError(f"{filtered}: not an output of 'vtlm-cc filter' (no {FILTER_REPORT}, raw/, "
                         "image_splits/); run 'vtlm-cc filter' first")  # fmt: skip
    try:
        splits = json.loads(report_path.read_text(encoding="utf-8"))["splits"]
        kept = {name: int(split["kept"]) for name, split in splits.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{report_path}: not a report of 'vtlm-cc filter' ({type(e).__name__}: {e})") from None
    for name, count in kept.items():
        if count == 0:
            raise InputError(
                f"{report_path}: split '{name}' kept no pairs (see {filtered / 'dropped.tsv'}); "
                "filter again without its TSV, or with its images"
            )


def run_prepare(args) -> dict:
    filtered = _input_dir(args.filtered_dir, "the output of 'vtlm-cc filter'")
    _check_filter_output(filtered)
    # prepare() checks its options and inputs (--bpe-codes, --dictionary, an
    # earlier data-bin) before any work, but not a dest_dir below a file
    make_output_dir(args.dest_dir)
    cfg = PrepareConfig(
        raw_dir=str(filtered / "raw"), dest_dir=args.dest_dir, image_splits_dir=str(filtered / "image_splits"),
        pretokenized=args.pretokenized, lowercase=args.lowercase, strip_accents=args.strip_accents,
        bpe_merges=args.bpe_merges, bpe_codes=args.bpe_codes, workers=args.workers, force=args.force,
        # only when given: the option belongs to vtlm-prepare's configuration
        **({"dictionary": args.dictionary} if args.dictionary else {}),
    )  # fmt: skip
    manifest = prepare(cfg)
    return {name: split["pairs"] for name, split in manifest["splits"].items()}


COMMANDS = {"download": run_download, "filter": run_filter, "prepare": run_prepare}


def run(argv=None) -> None:
    args = get_parser().parse_args(argv)
    result = COMMANDS[args.command](args)
    print(json.dumps(result, indent=2))  # the only output on stdout


def cli_main(argv=None):
    run_command(lambda: run(argv))


if __name__ == "__main__":
    cli_main()

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
    DEFAULT_DISALLOWED_DIRECTIVES,
    DISTRIBUTORS,
    IMAGE_EXTENSIONS,
    INSTALL_HINT,
    RECORDS_DIR,
    DownloadConfig,
    DownloadJob,
    download_images,
    index_image_names,
    recorded_images,
    scan_image_dir,
    unchecked_downloads,
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
        help="download the images of caption TSVs with img2dataset (resumable)",
        description=(
            "Downloads each image of the TSVs with img2dataset (multiprocessing on "
            "this machine, pyspark or ray across many; needs the [download] extra: "
            f"{INSTALL_HINT}), keeping the bytes as served. Each file is checked "
            "(its size, then a full decode with Pillow) and moved to OUT/<id>.<ext> "
            "(extension from the bytes: jpg, png, gif, webp); every id's outcome "
            f"(status, error) is recorded under OUT/{RECORDS_DIR}/, which "
            "'vtlm-cc filter --image-dir OUT' reads. A rerun downloads the ids "
            "without an image: transient failures (timeouts, 5xx, 408/429, "
            "connection errors) are retried, permanent ones (other 4xx, refused "
            "redirects, X-Robots-Tag refusals, invalid_image, too_large) only with "
            "--retry-failed; an id whose URL changed is tried again. Stopped at any "
            "moment (Ctrl-C: exit status 130, after checking the finished shards; "
            "even killed), a rerun goes on without losing or counting twice."
        ),
    )
    dl.add_argument("tsvs", nargs="+", metavar="TSV", help=TSV_HELP)
    dl.add_argument("--out", required=True, dest="out_dir", help="image folder, created if needed (required)")
    dl.add_argument("--processes", type=POSITIVE_INT, default=dl_defaults.processes,
                    help="img2dataset's download processes, and as many checking the downloaded files "
                    "(default: the CPUs this process may use, %(default)s here)")
    dl.add_argument("--threads", type=POSITIVE_INT, default=dl_defaults.threads,
                    help="downloads at once in each process (default: %(default)s)")
    dl.add_argument("--shard-size", type=POSITIVE_INT, default=dl_defaults.shard_size,
                    help="ids per img2dataset shard, the unit that a stopped run keeps; each run may use "
                    "another (default: %(default)s)")
    dl.add_argument("--distributor", choices=DISTRIBUTORS, default=dl_defaults.distributor,
                    help="img2dataset's distributor: multiprocessing on this machine; pyspark (the cluster "
                    "PYSPARK_SUBMIT_ARGS names, else local) or ray (RAY_ADDRESS, else local), which need "
                    "their package and OUT on a file system every machine sees (default: %(default)s)")
    dl.add_argument("--timeout", type=POSITIVE_SECONDS, default=dl_defaults.timeout,
                    help="seconds per socket operation: connecting and each read, not the whole transfer "
                    "(default: %(default)s)")
    dl.add_argument("--retries", type=COUNT, default=dl_defaults.retries,
                    help="immediate further attempts after any failure, a 404 too (default: %(default)s; "
                    "a rerun retries the transient failures)")
    dl.add_argument("--max-bytes", type=parse_size, default=format_size(dl_defaults.max_bytes),
                    help="largest file kept, in bytes or with K, M, G; a larger one is downloaded, then "
                    "refused as too_large (default: %(default)s)")
    dl.add_argument("--formats", nargs="+", choices=tuple(IMAGE_EXTENSIONS), default=list(dl_defaults.formats),
                    help=f"image formats kept; others are invalid_image (default: {' '.join(dl_defaults.formats)}, "
                    "those the feature extractor decodes)")
    dl.add_argument("--user-agent-token", default=dl_defaults.user_agent_token,
                    help="a token added to img2dataset's User-Agent, '(compatible; TOKEN; "
                    "+https://github.com/rom1504/img2dataset)'; X-Robots-Tag directives for that token "
                    "apply too (default: none)")
    dl.add_argument("--disallowed-header-directives", nargs="*", metavar="DIRECTIVE",
                    default=list(DEFAULT_DISALLOWED_DIRECTIVES),
                    help="X-Robots-Tag directives that make a server's image off limits (a permanent failure); "
                    "give the option with none to fetch regardless (default: %s)"
                    % " ".join(DEFAULT_DISALLOWED_DIRECTIVES))
    dl.add_argument("--retry-failed", action="store_true",
                    help="also retry earlier permanent failures: 4xx but 408/429, refused redirects, "
                    "X-Robots-Tag refusals, invalid_image, too_large (default: off)")
    dl.add_argument("--strict", action="store_true",
                    help="stop at the first malformed TSV line (default: off, such lines are counted and skipped)")  # fmt: skip

    flt = sub.add_parser(
        "filter",
        help="keep the pairs whose image is there (and in a feature store)",
        description=(
            "Writes OUT/raw/{split}.{en,de} and OUT/image_splits/{split}.txt (the "
            "image file names, <id>.<ext>) for every TSV, keeping each pair in its "
            "split and dropping the lines that are malformed or whose image is "
            "missing (from --image-dir, or from --features when given; with the "
            "records of 'vtlm-cc download', dropped.tsv names each missing image's "
            "download status and error). Also "
            "OUT/images.txt (every image once: the feature extractor's list), "
            "OUT/dropped.tsv (every dropped line and why) and "
            f"OUT/{FILTER_REPORT} (pairs lost per split)."
        ),
    )
    flt.add_argument("tsvs", nargs="+", metavar="TSV", help=TSV_HELP)
    flt.add_argument("--out", required=True, dest="out_dir", help="output folder, created if needed (required)")
    flt.add_argument("--image-dir",
                     help="the download folder, images named <id>.<ext>: where it holds the records of "
                     f"'vtlm-cc download' ({RECORDS_DIR}/), the images they record as downloaded, else every "
                     "image file in it (default: none, the images of --features count; give either or both)")
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


def run_download(args) -> dict:
    tsvs = _tsv_splits(args.tsvs)
    problems = ProblemLog()
    lines = {split: 0 for split in tsvs}

    def jobs():
        # one pass over the TSVs, read in full before any download starts
        for split, item in read_split_tsvs(tsvs, args.strict):
            lines[split] += 1
            if isinstance(item, CaptionPair):
                yield DownloadJob(item.image_id, item.url, item.source)
            else:
                problems(item)
        for split, tsv in tsvs.items():
            logger.info("%s: %d lines (split %s)", tsv, lines[split], split)
        logger.info("%d malformed lines skipped", problems.count)

    cfg = DownloadConfig(
        out_dir=args.out_dir, processes=args.processes, threads=args.threads, shard_size=args.shard_size,
        distributor=args.distributor, timeout=args.timeout, retries=args.retries, max_bytes=args.max_bytes,
        formats=tuple(args.formats), user_agent_token=args.user_agent_token,
        disallowed_header_directives=tuple(args.disallowed_header_directives), retry_failed=args.retry_failed,
    )  # fmt: skip
    summary = download_images(jobs(), cfg)
    return {"malformed_lines": problems.count, **summary.as_dict()}


def _images_of_dir(image_dir) -> tuple:
    """(id -> image file, id -> why it has none) of a download folder: from
    its download records where it has them, else every image file in it."""
    folder = _input_dir(image_dir, "--image-dir")
    records = recorded_images(folder)
    if records is None:
        images = scan_image_dir(folder)
        logger.info("%s: %d images (no download records: every image file counts)", image_dir, len(images))
        return images, None
    unchecked = unchecked_downloads(folder)
    if unchecked:
        logger.warning("%s: %d downloaded shards are not checked yet (a download was stopped); "
                       "rerun vtlm-cc download to add their images", image_dir, unchecked)  # fmt: skip
    logger.info("%s: %d images recorded as downloaded (%s)", image_dir, len(records.images), RECORDS_DIR)
    return records.images, records.reasons


def run_filter(args) -> dict:
    if not args.image_dir and not args.features:
        raise InputError("give --image-dir, --features or both: the images that count as available")
    tsvs = _tsv_splits(args.tsvs)
    make_output_dir(args.out_dir)
    store = None
    if args.features:
        store = open_store(args.features, validate="none")  # one store, or shards read as one
    reasons = None
    if args.image_dir:
        images, reasons = _images_of_dir(args.image_dir)
    else:  # the store's names are the image file names
        images = index_image_names(store.names, args.features)
    if store is not None:
        logger.info("%s: %d images with features", args.features, len(store))
    result = filter_splits(tsvs, args.out_dir, images, features=store, strict=args.strict, force=args.force,
                           missing_reasons=reasons)  # fmt: skip
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

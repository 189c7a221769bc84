"""vtlm-cc: Conceptual Captions En-De from the paper's TSVs to a data-bin:
download the images, filter the splits to what was downloaded (and
extracted), prepare the text."""

import argparse
import json
import logging
import sys
from pathlib import Path

from ..data.conceptual_captions import (
    CC_SPLITS,
    CaptionPair,
    ProblemLog,
    filter_splits,
    parse_split_args,
    read_split_tsvs,
)
from ..data.corpus import CorpusError
from ..data.feature_store import FeatureStore, FeatureStoreError
from ..data.image_download import (
    FAILURE_REPORT,
    IMAGE_EXTENSIONS,
    DownloadConfig,
    DownloadJob,
    download_images,
    index_image_names,
    scan_image_dir,
)
from ..data.preparation import PrepareConfig, prepare
from .logging_setup import setup_logging

logger = logging.getLogger("vtlm_fairseq.cc")

TSV_HELP = (
    "caption TSVs (id, url, English, German), as [NAME=]PATH; the split name "
    "is the file's last suffix (cc-en-de.tsv.train -> train) unless given"
)


def parse_size(text: str) -> int:
    """``16M``, ``500K``, ``1G`` or a plain number of bytes."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("B")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16M, 500K, 20000000)") from None


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-cc",
        description=(
            "Conceptual Captions En-De (the paper's cc-en-de.tsv.{train,valid,test}) "
            "for VTLM pre-training: download the images, filter the splits to the "
            "pairs with an image (and features), prepare the text as vtlm-prepare does."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    dl_defaults = DownloadConfig(out_dir="")

    dl = sub.add_parser(
        "download",
        help="download the images of caption TSVs (concurrent, resumable)",
        description=(
            "Downloads each image of the TSVs to OUT/<id>.<ext> (extension from the "
            "bytes: jpg, png, gif, webp), checks that it is a complete image, and "
            f"reports every failure (id, url, reason) in OUT/{FAILURE_REPORT}. A rerun "
            "fetches only what is missing; permanent failures (404, not an image, too "
            "large) are not tried again unless --retry-failed, transient ones "
            "(timeouts, 5xx, connection errors) are."
        ),
    )
    dl.add_argument("tsvs", nargs="+", metavar="TSV", help=TSV_HELP)
    dl.add_argument("--out", required=True, dest="out_dir", help="image folder")
    dl.add_argument("--workers", type=int, default=dl_defaults.workers, help="parallel downloads")
    dl.add_argument("--timeout", type=float, default=dl_defaults.timeout,
                    help="seconds per attempt: to connect, per wait, and for the whole transfer")  # fmt: skip
    dl.add_argument("--retries", type=int, default=dl_defaults.retries,
                    help="further attempts after a timeout, 5xx, 408/429 or connection error")  # fmt: skip
    dl.add_argument("--backoff", type=float, default=dl_defaults.backoff,
                    help="seconds before the first retry; doubled after each")  # fmt: skip
    dl.add_argument("--max-bytes", type=parse_size, default=dl_defaults.max_bytes,
                    help="largest file accepted (e.g. 16M)")  # fmt: skip
    dl.add_argument("--max-redirects", type=int, default=dl_defaults.max_redirects)
    dl.add_argument("--formats", nargs="+", choices=tuple(IMAGE_EXTENSIONS), default=list(dl_defaults.formats),
                    help="image formats accepted (default: those the feature extractor decodes)")  # fmt: skip
    dl.add_argument("--user-agent", default=dl_defaults.user_agent)
    dl.add_argument("--report", help=f"failure report (default OUT/{FAILURE_REPORT})")
    dl.add_argument("--retry-failed", action="store_true", help="also retry earlier permanent failures")
    dl.add_argument("--verify-existing", action="store_true",
                    help="re-check the images already there (reads every file) and replace broken ones")  # fmt: skip
    dl.add_argument("--strict", action="store_true", help="stop at the first malformed TSV line")
    dl.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    flt = sub.add_parser(
        "filter",
        help="keep the pairs whose image is there (and in a feature store)",
        description=(
            "Writes OUT/raw/{split}.{en,de} and OUT/image_splits/{split}.txt (the "
            "image file names, <id>.<ext>) for every TSV, keeping each pair in its "
            "split and dropping the lines that are malformed or whose image is "
            "missing (from --image-dir, or from --features when given). Also "
            "OUT/images.txt (every image once: the feature extractor's list), "
            "OUT/dropped.tsv (every dropped line and why) and OUT/filter_report.json "
            "(pairs lost per split)."
        ),
    )
    flt.add_argument("tsvs", nargs="+", metavar="TSV", help=TSV_HELP)
    flt.add_argument("--out", required=True, dest="out_dir")
    flt.add_argument("--image-dir", help="the download folder (images named <id>.<ext>)")
    flt.add_argument("--features", help="feature store (HDF5): keep only images that are in it")
    flt.add_argument("--strict", action="store_true", help="stop at the first malformed TSV line")
    flt.add_argument("--force", action="store_true", help="rewrite an earlier output")

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
                      help="languages that are tokenised already (default: en; none: --pretokenized)")  # fmt: skip
    prep.add_argument("--no-lowercase", dest="lowercase", action="store_false")
    prep.add_argument("--keep-accents", dest="strip_accents", action="store_false")
    prep.add_argument("--bpe-merges", type=int, default=50000, help="joint BPE merges (the paper: 50000)")
    prep.add_argument("--bpe-codes", help="apply these BPE codes instead of learning")
    prep.add_argument("--dictionary", help="binarise with this joined dictionary (as vtlm-prepare --dictionary)")
    prep.add_argument("--workers", type=int, default=defaults.workers)
    prep.add_argument("--force", action="store_true", help="rebuild an existing data-bin")
    return p


def _download_jobs(tsvs, strict):
    for _, item in read_split_tsvs(tsvs, strict):
        if isinstance(item, CaptionPair):
            yield DownloadJob(item.image_id, item.url, item.source)


def run_download(args) -> dict:
    tsvs = parse_split_args(args.tsvs)
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
        retry_failed=args.retry_failed, verify_existing=args.verify_existing, progress=args.progress,
    )  # fmt: skip
    summary = download_images(_download_jobs(tsvs, args.strict), cfg, total=jobs)
    return {"malformed_lines": problems.count, **summary.as_dict()}


def run_filter(args) -> dict:
    if not args.image_dir and not args.features:
        raise CorpusError("give --image-dir, --features or both: the images that count as available")
    store = None
    if args.features:
        store = FeatureStore(args.features, validate="none")
    if args.image_dir:
        if not Path(args.image_dir).is_dir():
            raise CorpusError(f"{args.image_dir}: no such folder")
        images = scan_image_dir(args.image_dir)
        logger.info("%s: %d images", args.image_dir, len(images))
    else:  # the store's names are the image file names
        images = index_image_names(store.names, args.features)
    if store is not None:
        logger.info("%s: %d images with features", args.features, len(store))
    result = filter_splits(
        parse_split_args(args.tsvs), args.out_dir, images, features=store, strict=args.strict, force=args.force
    )
    missing = [s for s in CC_SPLITS if s not in result.splits]
    if missing:
        logger.info("no TSV for split(s) %s", ", ".join(missing))
    return result.as_dict()


def run_prepare(args) -> dict:
    filtered = Path(args.filtered_dir)
    for sub in ("raw", "image_splits"):
        if not (filtered / sub).is_dir():
            raise CorpusError(f"{filtered / sub}: missing; run 'vtlm-cc filter' first")
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


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        result = COMMANDS[args.command](args)
    except (CorpusError, FeatureStoreError, FileExistsError) as e:
        logger.error("%s", e)
        sys.exit(1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli_main()

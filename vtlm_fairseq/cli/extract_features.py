"""vtlm-extract-features: run a TensorFlow object detector over an image list
and write its top regions into a region-feature store."""

import argparse
import logging
import time

from ..data.feature_store import DEFAULT_NUM_CLASSES
from ..features.region_extraction import ExtractionConfig, default_report_path, extract_region_features
from .command import run_command

logger = logging.getLogger("vtlm_fairseq.extract_features")


def class_offset(text: str):
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or an integer, not {text!r}") from None


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-extract-features",
        description=(
            "Extract object-region features with a TensorFlow 2 detector SavedModel "
            "(outputs detection_boxes/scores/classes/features, num_detections) into "
            "an HDF5 region-feature store. Resumable: images already in the store "
            "are skipped, and a killed run loses at most one part (--part-images, "
            "--part-seconds) of its work. Needs TensorFlow: pip install 'vtlm-fairseq[extract]'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--detector", required=True, help="SavedModel folder (or an export folder with saved_model/)")
    p.add_argument("--image-dir", required=True, help="folder the image names are relative to")
    p.add_argument("--image-list", required=True,
                   help="one image file name per line; the names become the store's image names")
    p.add_argument("--output", required=True,
                   help="the store (.h5); created, or extended if it exists. Until the run ends, its work is "
                   "kept in OUTPUT.parts/, which a rerun continues from")
    p.add_argument("--num-shards", type=int, default=1,
                   help="split the list into this many parts (every N-th unique name)")
    p.add_argument("--shard-id", type=int, default=0, help="the part this process extracts, 0-based")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per detector call where the detector accepts batches "
                   "(same-size images only)")
    p.add_argument("--max-in-memory", type=int, default=16,
                   help="decoded images held at once, read ahead of the detector")
    p.add_argument("--max-regions", type=int, default=36, help="top regions by score kept per image")
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES,
                   help="detector classes without background (OpenImages v4: 601)")
    p.add_argument("--class-offset", type=class_offset, default=None, metavar="auto|N",
                   help="subtracted from detection_classes; 'auto' infers it from "
                   "raw_detection_scores, else 1")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature precision")
    p.add_argument("--min-side", type=int, default=16,
                   help="images whose smaller side has fewer pixels are reported as too small")
    p.add_argument("--signature", default="serving_default", help="the SavedModel signature to call")
    p.add_argument("--report", help="failed images as JSON lines (None: OUTPUT.failures.jsonl)")
    p.add_argument("--part-images", type=int, default=256,
                   help="images per part of OUTPUT.parts/: a kill loses at most this many images' work")
    p.add_argument("--part-seconds", type=float, default=60.0,
                   help="a part is also closed after this many seconds, whatever its size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p  # fmt: skip


def run(args) -> int:
    config = ExtractionConfig(
        detector=args.detector,
        image_dir=args.image_dir,
        image_list=args.image_list,
        output=args.output,
        max_regions=args.max_regions,
        batch_size=args.batch_size,
        max_in_memory=args.max_in_memory,
        num_shards=args.num_shards,
        shard_id=args.shard_id,
        dtype=args.dtype,
        num_classes=args.num_classes,
        class_offset=args.class_offset,
        min_side=args.min_side,
        signature=args.signature,
        report=args.report,
        part_images=args.part_images,
        part_seconds=args.part_seconds,
    )
    start = time.time()
    report = extract_region_features(config, progress=not args.no_progress)
    for line in report.lines():
        logger.info("%s", line)
    report_path = args.report or default_report_path(args.output)
    if report.failures:
        logger.info("failed images are listed in %s", report_path)
    logger.info("%s: done in %.1f s", args.output, time.time() - start)
    # Failed images are expected in web-crawled corpora and are in the report;
    # they do not make the run fail, so sharded scripts can use `set -e`.
    return 0


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

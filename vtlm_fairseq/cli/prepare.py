"""vtlm-prepare: raw parallel text (+ image lists) -> fairseq data-bin."""

import argparse
import logging
import sys

from ..data.corpus import CorpusError
from ..data.preparation import PrepareConfig, prepare
from .logging_setup import setup_logging


def get_parser():
    defaults = PrepareConfig(raw_dir="", dest_dir="")
    p = argparse.ArgumentParser(
        prog="vtlm-prepare",
        description=(
            "Moses-tokenise, lowercase/strip accents, learn and apply joint BPE, and "
            "binarise a parallel corpus with fairseq-preprocess (joined dictionary). "
            "Each split's image list is copied next to it as {split}.order."
        ),
    )
    p.add_argument("raw_dir", help="folder with {split}.{lang} or {split}.{lang}.gz")
    p.add_argument("dest_dir", help="output data-bin folder")
    p.add_argument("--src", default=defaults.src)
    p.add_argument("--tgt", default=defaults.tgt)
    p.add_argument(
        "--splits",
        nargs="+",
        default=[],
        metavar="NAME[=RAW]",
        help="splits to prepare (default: every split found; 'val' becomes 'valid')",
    )
    p.add_argument(
        "--image-splits",
        dest="image_splits_dir",
        help="folder with {raw_split}.txt image lists (one image name per sentence pair)",
    )
    p.add_argument("--no-lowercase", dest="lowercase", action="store_false")
    p.add_argument("--keep-accents", dest="strip_accents", action="store_false")
    p.add_argument("--bpe-merges", type=int, default=defaults.bpe_merges)
    p.add_argument("--bpe-codes", help="apply these codes (subword-nmt, or fastBPE's 'left right count') instead of learning")
    p.add_argument("--dictionary", help="binarise with this joined dictionary, e.g. a converted checkpoint's dict.txt")
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--force", action="store_true", help="rebuild an existing data-bin")
    return p


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        prepare(PrepareConfig(**vars(args)))
    except (CorpusError, FileExistsError) as e:
        logging.getLogger("vtlm_fairseq.prepare").error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    cli_main()

"""vtlm-prepare: raw parallel text (+ image lists) -> fairseq data-bin."""

import argparse

from ..text.preparation import PrepareConfig, prepare
from .command import run_command


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
    p.add_argument("--src", default=defaults.src,
                   help="source language, the suffix of its files (default: %(default)s)")
    p.add_argument("--tgt", default=defaults.tgt,
                   help="target language, the suffix of its files (default: %(default)s)")
    p.add_argument(
        "--splits",
        nargs="+",
        default=[],
        metavar="NAME[=RAW]",
        help="splits to prepare, NAME in the data-bin from RAW_DIR/RAW.{lang} (default: every split found; "
        "'val' becomes 'valid')",
    )
    p.add_argument(
        "--image-splits",
        dest="image_splits_dir",
        help="folder with {raw_split}.txt image lists, one image name per sentence pair "
        "(default: none, text only)",
    )
    p.add_argument("--no-lowercase", dest="lowercase", action="store_false",
                   help="keep the case (default: lowercase, as the paper)")
    p.add_argument("--keep-accents", dest="strip_accents", action="store_false",
                   help="keep accents (default: strip them, as the paper)")
    p.add_argument("--bpe-merges", type=int, default=defaults.bpe_merges,
                   help="joint BPE merges to learn on train (default: %(default)s)")
    p.add_argument("--bpe-codes", help="apply these codes (subword-nmt, or fastBPE's 'left right count') "
                   "instead of learning (default: learn them)")
    p.add_argument("--dictionary", help="binarise with this joined dictionary, e.g. a converted checkpoint's "
                   "dict.txt (default: build one from train)")
    p.add_argument("--workers", type=int, default=defaults.workers,
                   help="processes for tokenisation, BPE and binarisation (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="rebuild an existing data-bin, removing what an earlier run wrote there (default: off)")
    return p  # fmt: skip


def run(args) -> int:
    prepare(PrepareConfig(**vars(args)))  # its manifest is DEST/prepare.json
    return 0


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

"""vtlm-convert-checkpoint: a checkpoint of the reference VTLM code (XLM
format) -> a fairseq checkpoint of this plugin plus its dictionary."""

import argparse
import logging
import sys

from .logging_setup import setup_logging


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-convert-checkpoint",
        description=(
            "Convert a reference VTLM/TLM pre-trained encoder or NMT/MMT model (XLM format: 'model' or "
            "'encoder'/'decoder', dico_*, params) into OUT_DIR/checkpoint.pt with dict.txt, "
            "dict.SRC.txt, dict.TGT.txt and conversion.json. The file is read with torch's weights-only "
            "loader and an allow-list of numpy types: a file that would import anything else is refused."
        ),
    )
    p.add_argument("checkpoint", help="the reference's .pth file")
    p.add_argument("out_dir", help="folder for checkpoint.pt and the dictionary")
    p.add_argument("--kind", default="auto", choices=["auto", "tlm", "vtlm", "nmt", "mmt"],
                   help="model type (auto: encoder-only with only_vlm -> vtlm, else tlm; mmt_steps -> mmt, else nmt)")
    p.add_argument("--source-lang", default="en")
    p.add_argument("--target-lang", default="de")
    p.add_argument("--region-features", help="feature store recorded in the checkpoint's task config (VTLM/MMT)")
    return p


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    import vtlm_fairseq  # noqa: F401  (registers tasks and models)
    from ..convert.reference_checkpoint import ConversionError, convert
    from ..convert.safe_load import UnsafeCheckpointError

    try:
        convert(args.checkpoint, args.out_dir, args.kind, args.source_lang, args.target_lang, args.region_features)
    except (ConversionError, UnsafeCheckpointError, FileNotFoundError) as e:
        logging.getLogger("vtlm_fairseq.convert").error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    cli_main()

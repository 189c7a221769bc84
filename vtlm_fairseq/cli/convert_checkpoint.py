"""vtlm-convert-checkpoint: a checkpoint of the reference VTLM code (XLM
format) -> a fairseq checkpoint of this plugin plus its dictionary."""

import argparse

from .command import run_command


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
    p.add_argument("out_dir", help="folder for checkpoint.pt and the dictionary (made if missing)")
    p.add_argument("--kind", default="auto", choices=["auto", "tlm", "vtlm", "nmt", "mmt"],
                   help="model type (auto: encoder-only with only_vlm -> vtlm, else tlm; mmt_steps -> mmt, "
                   "else nmt; default: %(default)s)")
    p.add_argument("--source-lang", default="en", help="source language of the pair (default: %(default)s)")
    p.add_argument("--target-lang", default="de", help="target language of the pair (default: %(default)s)")
    p.add_argument("--region-features", help="feature store recorded in the checkpoint's task config, VTLM/MMT "
                   "(default: none; give it to fairseq with --region-features)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT_DIR/checkpoint.pt (default: off, refuse)")
    return p  # fmt: skip


def run(args) -> int:
    import vtlm_fairseq  # noqa: F401  (registers tasks and models)
    from ..convert.reference_checkpoint import convert

    convert(args.checkpoint, args.out_dir, args.kind, args.source_lang, args.target_lang, args.region_features,
            force=args.force)  # fmt: skip
    return 0


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

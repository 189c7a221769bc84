"""vtlm-toy-world: build the toy corpus, or score translations of it."""

import argparse
import json
from dataclasses import fields

from ..scoring import check_counts, read_hypotheses
from ..toy_world import ToyWorldConfig, ambiguous_word_accuracy, build_toy_world, read_annotations
from .command import run_command


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-toy-world",
        description=(
            "A grounded En-De toy corpus in the formats of real data (raw text, image "
            "lists, region-feature store) whose images decide the German sense of "
            "ambiguous English nouns."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the toy world to a folder (its statistics go to stdout as JSON)")
    build.add_argument("out_dir", help="output folder (raw/, image_splits/, features.h5, ambiguity/, ...)")
    defaults = ToyWorldConfig()
    for f in fields(ToyWorldConfig):
        minimum = f.metadata["minimum"]
        build.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            choices=("float16", "float32") if f.name == "dtype" else None,
            help=f.metadata["help"] + (f" (at least {minimum}; " if minimum else " (") + "default: %(default)s)",
        )
    score = sub.add_parser("score", help="ambiguous-word accuracy of translations (JSON on stdout)")
    score.add_argument("--hyp", required=True,
                       help="translations in corpus order: one per line, or fairseq-generate output (H- lines)")
    score.add_argument("--annotations", required=True, help="ambiguity/{split}.jsonl of the toy world")
    return p  # fmt: skip


def run(args) -> int:
    if args.command == "build":
        cfg = ToyWorldConfig(**{f.name: getattr(args, f.name) for f in fields(ToyWorldConfig)})
        print(json.dumps(build_toy_world(args.out_dir, cfg)["splits"], indent=2))
    else:
        hyps = read_hypotheses(args.hyp)
        annotations = read_annotations(args.annotations)
        check_counts(args.hyp, hyps, args.annotations, annotations, "annotated sentences")
        print(json.dumps(ambiguous_word_accuracy(hyps, annotations)))
    return 0


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

"""vtlm-toy-world: build the toy corpus, or score translations of it."""

import argparse
import json
from dataclasses import fields

from ..toy_world import ToyWorldConfig, ambiguous_word_accuracy, build_toy_world, read_annotations
from .logging_setup import setup_logging


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
    build = sub.add_parser("build", help="write the toy world to a folder")
    build.add_argument("out_dir")
    defaults = ToyWorldConfig()
    for f in fields(ToyWorldConfig):
        build.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            choices=("float16", "float32") if f.name == "dtype" else None,
        )
    score = sub.add_parser("score", help="ambiguous-word accuracy of translations")
    score.add_argument("--hyp", required=True, help="one translation per line, corpus order")
    score.add_argument(
        "--annotations", required=True, help="ambiguity/{split}.jsonl of the toy world"
    )
    return p


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    if args.command == "build":
        cfg = ToyWorldConfig(**{f.name: getattr(args, f.name) for f in fields(ToyWorldConfig)})
        print(json.dumps(build_toy_world(args.out_dir, cfg)["splits"], indent=2))
    else:
        with open(args.hyp, encoding="utf-8") as f:
            hyps = [line.rstrip("\n") for line in f]
        print(json.dumps(ambiguous_word_accuracy(hyps, read_annotations(args.annotations))))


if __name__ == "__main__":
    cli_main()

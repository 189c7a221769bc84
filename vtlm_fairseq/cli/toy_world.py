"""vtlm-toy-world: build the toy corpus, or score translations of it."""

import argparse
import json
from dataclasses import fields

from ..output_paths import check_output_file
from ..scoring import check_counts, read_hypotheses
from ..toy_world import ToyWorldConfig, ambiguous_word_accuracy, build_toy_world, read_annotations
from ..toy_world.caption_detections import CaptionDetectionConfig, write_caption_detections
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
    add_config_options(build, ToyWorldConfig)
    detect = sub.add_parser(
        "caption-detections",
        help="a region-feature store for a real captioned corpus, simulated from what its captions name "
             "(statistics as JSON on stdout)",
        description="Region features a noisy detector would give for the images of a real corpus (e.g. "
                    "Multi30k's raw/ text and image_splits/ lists): each object a caption names (the "
                    "detector's 601 classes, with the probes' entity word list) is detected with some "
                    "recall, random false detections and the corpus's most frequently named classes fill "
                    "the other regions; features are class prototypes plus noise. Deterministic from the seed.",
    )  # fmt: skip
    detect.add_argument("raw_dir", help="folder of raw text: {split}.{lang}[.gz]")
    detect.add_argument("image_splits", help="folder of image lists: {split}.txt, line i = image of pair i")
    detect.add_argument("out", help="the region-feature store to write (.h5)")
    detect.add_argument("--splits", nargs="+",
                        help="splits to cover (default: every image list in IMAGE_SPLITS)")  # fmt: skip
    detect.add_argument("--lang", default="en", help="caption language of RAW_DIR (default: %(default)s)")
    detect.add_argument("--force", action="store_true", help="replace OUT if it exists (default: refuse to)")
    add_config_options(detect, CaptionDetectionConfig)
    score = sub.add_parser("score", help="ambiguous-word accuracy of translations (JSON on stdout)")
    score.add_argument("--hyp", required=True,
                       help="translations in corpus order: one per line, or fairseq-generate output (H- lines)")
    score.add_argument("--annotations", required=True, help="ambiguity/{split}.jsonl of the toy world")
    return p  # fmt: skip


def add_config_options(parser, config_class):
    """One option per field of a config dataclass, with its help and bounds."""
    defaults = config_class()
    for f in fields(config_class):
        minimum = f.metadata["minimum"]
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            choices=f.metadata.get("choices"),
            help=f.metadata["help"] + (f" (at least {minimum}; " if minimum else " (") + "default: %(default)s)",
        )


def config_from(args, config_class):
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def run(args) -> int:
    if args.command == "caption-detections":
        check_output_file(args.out, "OUT")
        stats = write_caption_detections(args.raw_dir, args.image_splits, args.out,
                                         config_from(args, CaptionDetectionConfig), args.splits, args.lang,
                                         overwrite=args.force)  # fmt: skip
        print(json.dumps(stats, indent=2))
    elif args.command == "build":
        print(json.dumps(build_toy_world(args.out_dir, config_from(args, ToyWorldConfig))["splits"], indent=2))
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

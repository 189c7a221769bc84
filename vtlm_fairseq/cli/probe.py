"""vtlm-probe: probes of pre-trained (V)TLM checkpoints."""

import argparse
import json

from .logging_setup import setup_logging


def get_parser():
    p = argparse.ArgumentParser(prog="vtlm-probe", description="Probe pre-trained (V)TLM checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("checkpoint")
    common.add_argument("--data", help="data-bin (default: the one the model was trained on)")
    common.add_argument("--region-features", help="feature store (default: as trained)")
    common.add_argument("--split", default="valid")
    common.add_argument("--json", help="also write the rows here")

    amb = sub.add_parser(
        "ambiguous",
        parents=[common],
        help="toy world: restore masked ambiguous nouns (English, German, both), correct vs shuffled images",
    )
    amb.add_argument("--annotations", required=True, help="toy world ambiguity/{split}.jsonl")
    amb.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="shuffled-image seeds")

    reg = sub.add_parser("regions", parents=[common], help="masked region classification vs majority class")
    reg.add_argument("--region-mask-prob", type=float, default=0.15)
    return p


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    from ..probing.masked_words import load_pretrained

    overrides = {}
    if args.data:
        overrides["data"] = args.data
    if args.region_features:
        overrides["region_features"] = args.region_features
    model, task = load_pretrained(args.checkpoint, overrides)
    if args.command == "ambiguous":
        from ..probing.masked_words import probe_ambiguous_words
        from ..toy_world import read_annotations

        image_orders = ("aligned", "shuffled") if hasattr(task, "store") else ("aligned",)
        rows = probe_ambiguous_words(
            model, task, args.split, read_annotations(args.annotations),
            image_orders=image_orders, seeds=tuple(args.seeds),
        )  # fmt: skip
    else:
        from ..probing.regions import region_classification

        rows = [region_classification(model, task, args.split, args.region_mask_prob)]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli_main()

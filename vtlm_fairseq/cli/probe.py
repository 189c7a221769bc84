"""vtlm-probe: probes of pre-trained (V)TLM and fine-tuned NMT/MMT checkpoints."""

import argparse
import json
import logging
import sys

from .logging_setup import setup_logging


def _named(value: str):
    """NAME=CHECKPOINT (NAME defaults to the file's parent folder)."""
    if "=" in value:
        name, path = value.split("=", 1)
    else:
        from pathlib import Path

        name, path = Path(value).parent.name or Path(value).stem, value
    return name, path


def get_parser():
    p = argparse.ArgumentParser(prog="vtlm-probe", description="Probe (V)TLM and NMT/MMT checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", help="data-bin (default: the one the model was trained on)")
    data.add_argument("--region-features", help="feature store (default: as trained)")
    data.add_argument("--json", help="also write the rows here")
    common = argparse.ArgumentParser(add_help=False, parents=[data])
    common.add_argument("checkpoint")
    common.add_argument("--split", default="valid")
    seeds = argparse.ArgumentParser(add_help=False)
    seeds.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="shuffled-image seeds")

    last = sub.add_parser("last-word", parents=[common, seeds],
                          help="restore the masked last word of the English half, the German half or both")  # fmt: skip
    last.add_argument("--drop-full-stop", action="store_true", help="also remove the final full stop (the paper)")

    amb = sub.add_parser("ambiguous", parents=[common, seeds],
                         help="toy world: restore masked ambiguous nouns (English, German, both)")  # fmt: skip
    amb.add_argument("--annotations", required=True, help="toy world ambiguity/{split}.jsonl")

    reg = sub.add_parser("regions", parents=[common], help="masked region classification vs majority class")
    reg.add_argument("--region-mask-prob", type=float, default=0.15)

    suite = sub.add_parser("suite", parents=[data, seeds],
                           help="every probe for a set of checkpoints: Markdown table, JSON and PNG plots")  # fmt: skip
    suite.add_argument("--pretrained", nargs="*", default=[], metavar="NAME=CKPT", help="TLM/VTLM checkpoints")
    suite.add_argument("--translation", nargs="*", default=[], metavar="NAME=CKPT", help="NMT/MMT checkpoints")
    suite.add_argument("--out", required=True, help="folder for probes.md, probes.json and the plots")
    suite.add_argument("--split", default="test", help="split the translation probes decode")
    suite.add_argument("--pretrained-split", default="valid", help="split of the masked-word probes")
    suite.add_argument("--words", help="entity word list (default: the Multi30k list in the package) "
                                       "or a toy world's lexicon.json")  # fmt: skip
    suite.add_argument("--references", help="raw references of --split (default: from the data-bin's prepare.json)")
    suite.add_argument("--annotations", nargs="*", default=[], metavar="SPLIT=FILE",
                       help="toy world ambiguity files, e.g. valid=WORLD/ambiguity/valid.jsonl")  # fmt: skip
    suite.add_argument("--beam", type=int, default=8)

    att = sub.add_parser("attention", parents=[data], help="picture of an MMT's cross-attention over the regions")
    att.add_argument("checkpoint")
    att.add_argument("--split", default="test")
    att.add_argument("--index", type=int, nargs="+", default=[0], help="sentence numbers of the split")
    att.add_argument("--image-dir", help="draw on the image itself where it is found here")
    att.add_argument("--out", required=True, help="PNG file (with several --index: NAME_INDEX.png)")
    return p


def _overrides(args) -> dict:
    out = {}
    if args.data:
        out["data"] = args.data
    if args.region_features:
        out["region_features"] = args.region_features
    return out


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        rows = _run(args)
    except (ValueError, FileNotFoundError, IndexError) as e:
        logging.getLogger("vtlm_fairseq.probe").error("%s", e)
        sys.exit(1)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _run(args):
    from ..probing import masked_words

    if args.command == "suite":
        from ..probing.suite import run_suite
        from ..probing.translation import EntityWords

        annotations = {}
        if args.annotations:
            from ..toy_world import read_annotations

            for item in args.annotations:
                split, path = item.split("=", 1)
                annotations[split] = read_annotations(path)
        return run_suite(
            dict(map(_named, args.pretrained)), dict(map(_named, args.translation)), args.out,
            overrides=_overrides(args), split=args.split, pretrained_split=args.pretrained_split,
            words=EntityWords.load(args.words), annotations=annotations, seeds=tuple(args.seeds),
            references=args.references, beam=args.beam,
        )  # fmt: skip
    model, task = masked_words.load_pretrained(args.checkpoint, _overrides(args))
    visual = getattr(task, "store", None) is not None
    orders = ("aligned", "shuffled") if visual else ("aligned",)
    if args.command == "last-word":
        return masked_words.last_word_probe(model, task, args.split, image_orders=orders, seeds=tuple(args.seeds),
                                            drop_full_stop=args.drop_full_stop)  # fmt: skip
    if args.command == "ambiguous":
        from ..toy_world import read_annotations

        return masked_words.probe_ambiguous_words(model, task, args.split, read_annotations(args.annotations),
                                                  image_orders=orders, seeds=tuple(args.seeds))  # fmt: skip
    if args.command == "regions":
        from ..probing.regions import region_classification

        return [region_classification(model, task, args.split, args.region_mask_prob)]
    from ..probing.attention import draw_region_attention, region_attention

    rows = []
    for index in args.index:
        out = args.out if len(args.index) == 1 else args.out.replace(".png", f"_{index}.png")
        result = region_attention(model, task, args.split, index)
        draw_region_attention(result, out, image_dir=args.image_dir)
        rows.append({"index": index, "image": result["image"], "source": result["source"],
                     "translation": result["translation"], "picture": out})  # fmt: skip
    return rows


if __name__ == "__main__":
    cli_main()

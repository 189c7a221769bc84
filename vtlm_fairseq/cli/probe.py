"""vtlm-probe: probes of pre-trained (V)TLM and fine-tuned NMT/MMT checkpoints.
The rows go to stdout as JSON lines, the logs to stderr."""

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .command import run_command

# the checkpoints each single probe takes
KINDS = {"last-word": ("TLM", "VTLM"), "ambiguous": ("TLM", "VTLM"), "regions": ("VTLM",), "attention": ("MMT",),
         "contrastive": ("NMT", "MMT")}


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage mistake is one line, like every other bad input, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _named(value: str):
    """NAME=CHECKPOINT (NAME defaults to the file's parent folder)."""
    if "=" in value:
        name, path = value.split("=", 1)
    else:
        name, path = Path(value).parent.name or Path(value).stem, value
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT or CHECKPOINT, got {value!r}")
    return name, path


def _split_file(value: str):
    """SPLIT=FILE."""
    split, _, path = value.partition("=")
    if not split or not path:
        raise argparse.ArgumentTypeError(f"expected SPLIT=FILE, got {value!r}")
    return split, path


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], not {value}")
    return value


def get_parser():
    p = OneLineErrorParser(prog="vtlm-probe", description="Probe (V)TLM and NMT/MMT checkpoints. "
                           "Prints the rows as JSON lines on stdout; logs go to stderr.")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", help="data-bin to probe on (default: the one each model was trained on)")
    data.add_argument("--region-features", help="region-feature store (default: the one each model was trained "
                      "with; text-only models ignore it)")  # fmt: skip
    data.add_argument("--json", help="also write the rows to this file, as a JSON list (default: none)")
    common = argparse.ArgumentParser(add_help=False, parents=[data])
    common.add_argument("--split", default="valid", help="split of the data-bin to probe (default: %(default)s)")
    pretrained = argparse.ArgumentParser(add_help=False, parents=[common])
    pretrained.add_argument("checkpoint", help="checkpoint of a pre-trained TLM or VTLM")
    seeds = argparse.ArgumentParser(add_help=False)
    seeds.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                       help="seeds of the shuffled image orders, a row each (default: %(default)s)")  # fmt: skip

    last = sub.add_parser("last-word", parents=[pretrained, seeds],
                          help="restore the masked last word of the English half, the German half or both")  # fmt: skip
    last.add_argument("--drop-full-stop", action="store_true",
                      help="also remove the final full stop from the input, as the paper did "
                      "(default: off, the full stop stays)")  # fmt: skip

    amb = sub.add_parser("ambiguous", parents=[pretrained, seeds],
                         help="toy world: restore masked ambiguous nouns (English, German, both)")  # fmt: skip
    amb.add_argument("--annotations", required=True,
                     help="toy world ambiguity file of --split, WORLD/ambiguity/SPLIT.jsonl (required)")  # fmt: skip

    reg = sub.add_parser("regions", parents=[common], help="masked region classification vs majority class")
    reg.add_argument("checkpoint", help="checkpoint of a pre-trained VTLM")
    reg.add_argument("--region-mask-prob", type=_probability, default=0.15,
                     help="share of the regions to classify, in (0, 1] (default: %(default)s)")  # fmt: skip

    suite = sub.add_parser("suite", parents=[data, seeds],
                           help="every probe for a set of checkpoints: Markdown table, JSON and PNG plots")  # fmt: skip
    suite.add_argument("--pretrained", type=_named, nargs="*", default=[], metavar="NAME=CKPT",
                       help="TLM/VTLM checkpoints (NAME: default the checkpoint's folder) (default: none)")  # fmt: skip
    suite.add_argument("--translation", type=_named, nargs="*", default=[], metavar="NAME=CKPT",
                       help="NMT/MMT checkpoints (NAME: default the checkpoint's folder) (default: none)")  # fmt: skip
    suite.add_argument("--out", required=True,
                       help="folder for probes.md, probes.json and the plots, made if missing (required)")  # fmt: skip
    suite.add_argument("--split", default="test", help="split the translation probes decode (default: %(default)s)")
    suite.add_argument("--pretrained-split", default="valid",
                       help="split of the masked-word probes (default: %(default)s)")  # fmt: skip
    suite.add_argument("--words", help="entity word list or a toy world's lexicon.json "
                                       "(default: the Multi30k list in the package)")  # fmt: skip
    suite.add_argument("--references",
                       help="raw references of --split (default: the file the data-bin's prepare.json names)")
    suite.add_argument("--annotations", type=_split_file, nargs="*", default=[], metavar="SPLIT=FILE",
                       help="toy world ambiguity files, e.g. valid=WORLD/ambiguity/valid.jsonl (default: none)")
    suite.add_argument("--beam", type=_at_least(1), default=8,
                       help="beam size of the translation probes (default: %(default)s)")  # fmt: skip

    att = sub.add_parser("attention", parents=[data], help="picture of an MMT's cross-attention over the regions")
    att.add_argument("checkpoint", help="checkpoint of an MMT")
    att.add_argument("--split", default="test", help="split the sentences come from (default: %(default)s)")
    att.add_argument("--index", type=_at_least(0), nargs="+", default=[0],
                     help="sentence numbers of the split, from 0 (default: %(default)s)")  # fmt: skip
    att.add_argument("--image-dir", help="draw on the image itself where it is found here "
                                         "(default: none, regions on a blank canvas with class names)")  # fmt: skip
    att.add_argument("--out", required=True, help="picture file, e.g. attention.png (with several --index: "
                                                  "NAME_INDEX.png) (required)")  # fmt: skip
    con = sub.add_parser("contrastive", parents=[data, seeds],
                         help="contrastive evaluation (CoMMuTE): is the correct translation the likelier one, "
                         "with the correct and with shuffled images? (rows on stdout; --json adds every example)")
    con.add_argument("checkpoint", help="checkpoint of an NMT or MMT")
    con.add_argument("set", help="folder in CoMMuTE's layout: src.en, correct.de, incorrect.de, img.order (line i "
                     "of each = example i), e.g. WORLD/contrastive/test (img.order optional for an NMT)")
    con.add_argument("--batch-size", type=_at_least(1), default=64,
                     help="examples per batch (default: %(default)s)")  # fmt: skip
    return p


def _overrides(args) -> dict:
    return {"data": args.data, "region_features": args.region_features}


def _distinct(option: str, values):
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise InputError(f"{option}: {', '.join(repeated)} given twice")


def run(args) -> int:
    from ..output_paths import check_output_file

    for option in ("seeds", "index"):
        _distinct(f"--{option}", getattr(args, option, []))
    if args.json:
        check_output_file(args.json, "--json")
    rows = _probe(args)
    for row in rows:  # the per-example scores go to --json only
        print(json.dumps({k: v for k, v in row.items() if k != "per_example"}))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        except OSError as e:
            raise InputError(f"{args.json}: cannot write the rows ({e.strerror})") from None
    return 0


def _probe(args):
    from ..hub import load_checkpoint
    from ..probing import masked_words
    from ..probing.inputs import read_annotation_file

    if args.command == "suite":
        from ..probing.suite import run_suite
        from ..data.words import EntityWords

        for option in ("pretrained", "translation", "annotations"):
            _distinct(f"--{option}", [name for name, _ in getattr(args, option)])
        annotations = {split: read_annotation_file(path) for split, path in args.annotations}
        return run_suite(
            dict(args.pretrained), dict(args.translation), args.out,
            overrides=_overrides(args), split=args.split, pretrained_split=args.pretrained_split,
            words=EntityWords.load(args.words), annotations=annotations, seeds=tuple(args.seeds),
            references=args.references, beam=args.beam,
        )  # fmt: skip
    # the inputs that are cheap to check, before the model is loaded
    annotations = read_annotation_file(args.annotations) if args.command == "ambiguous" else None
    if args.command == "contrastive":
        from ..probing.contrastive import read_contrastive_set

        contrastive_set = read_contrastive_set(args.set)
    if args.command == "attention":
        from ..probing.attention import picture_paths

        pictures = picture_paths(args.out, args.index)
        if args.image_dir and not Path(args.image_dir).is_dir():
            raise InputError(f"{args.image_dir}: no such folder (--image-dir)")
    model, task, kind = load_checkpoint(args.checkpoint, _overrides(args), kinds=KINDS[args.command],
                                        purpose=f"vtlm-probe {args.command}")  # fmt: skip
    orders = ("aligned", "shuffled") if kind == "VTLM" else ("aligned",)
    if args.command == "last-word":
        return masked_words.last_word_probe(model, task, args.split, image_orders=orders, seeds=tuple(args.seeds),
                                            drop_full_stop=args.drop_full_stop)  # fmt: skip
    if args.command == "ambiguous":
        return masked_words.probe_ambiguous_words(model, task, args.split, annotations, image_orders=orders,
                                                  seeds=tuple(args.seeds))  # fmt: skip
    if args.command == "contrastive":
        from ..data.splits import split_data_path
        from ..probing.contrastive import contrastive_evaluation

        return contrastive_evaluation(model, task, kind, contrastive_set, split_data_path(task.cfg.data, epoch=1),
                                      args.checkpoint, seeds=tuple(args.seeds), batch_size=args.batch_size)
    if args.command == "regions":
        from ..probing.regions import region_classification

        return [region_classification(model, task, args.split, args.region_mask_prob)]
    from ..probing.attention import draw_region_attention, region_attention, split_with_sentences

    split_with_sentences(task, args.split, args.index)  # every index, before the first picture
    rows = []
    for index, out in zip(args.index, pictures):
        result = region_attention(model, task, args.split, index)
        draw_region_attention(result, out, image_dir=args.image_dir)
        rows.append({"index": index, "image": result["image"], "source": result["source"],
                     "translation": result["translation"], "picture": str(out)})  # fmt: skip
    return rows


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

"""vtlm-score: BLEU (standard and the reference code's), chrF, and the toy
world's ambiguous-word accuracy of a translation."""

import argparse
import json
import sys

from ..data.corpus import CorpusError, read_lines
from ..scoring import read_hypotheses, score
from .logging_setup import setup_logging


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-score",
        description=(
            "Score translations: bleu_detok (sacreBLEU, detokenised, with its signature), "
            "bleu_tok_lc (the reference code's BLEU on tokenised, lowercased, accent-stripped "
            "text), chrF, and ambiguous-word accuracy on the toy world."
        ),
    )
    p.add_argument("--hyp", required=True, help="fairseq-generate output (H- lines) or one hypothesis per line")
    p.add_argument("--ref", required=True, help="raw references, plain or gzipped (e.g. raw/test_2016_flickr.de.gz)")
    p.add_argument("--lang", default="de", help="target language (Moses rules)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="case-insensitive detokenised BLEU/chrF (default: when hypotheses are all lowercase)")
    case.add_argument("--cased", dest="lowercase", action="store_false")
    p.add_argument("--annotations", help="toy world ambiguity/{split}.jsonl: adds ambiguous-word accuracy")
    p.add_argument("--json", help="also write the scores here")
    return p


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        hyps = read_hypotheses(args.hyp)
        refs = read_lines(args.ref)
        annotations = None
        if args.annotations:
            from ..toy_world import read_annotations

            annotations = read_annotations(args.annotations)
        result = score(hyps, refs, args.lang, args.lowercase, annotations)
    except (CorpusError, ValueError) as e:
        print(f"vtlm-score: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    cli_main()

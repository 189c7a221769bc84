"""vtlm-score: BLEU (standard and the reference code's), chrF, METEOR, and
the toy world's ambiguous-word accuracy of a translation."""

import argparse
import json

from ..text.corpus import CorpusError, read_lines
from ..text.tokenization import moses_languages
from ..meteor import Meteor
from ..output_paths import check_output_file
from ..scoring import check_counts, read_hypotheses, score
from .command import run_command


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-score",
        description=(
            "Score translations: bleu_detok (sacreBLEU, detokenised, with its signature), "
            "bleu_tok_lc (the reference code's BLEU on tokenised, lowercased, accent-stripped "
            "text), chrF, METEOR 1.5 (as WMT's multimodal task runs it, with its signature), and "
            "ambiguous-word accuracy on the toy world. The scores are printed "
            "as JSON on stdout."
        ),
    )
    p.add_argument("--hyp", required=True,
                   help="fairseq-generate output (H- lines, put in corpus order) or one hypothesis per line")
    p.add_argument("--ref", required=True, help="raw references, plain or gzipped (e.g. raw/test_2016_flickr.de.gz)")
    p.add_argument("--lang", default="de",
                   help="target language, for Moses detokenisation and tokenisation (default: %(default)s)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="case-insensitive detokenised BLEU/chrF (default: when the hypotheses are all lowercase)")
    case.add_argument("--cased", dest="lowercase", action="store_false",
                      help="case-sensitive detokenised BLEU/chrF (default: unless the hypotheses are all lowercase)")
    p.add_argument("--annotations",
                   help="toy world ambiguity/{split}.jsonl: adds ambiguous-word accuracy (default: none)")
    p.add_argument("--no-meteor", dest="meteor", action="store_false",
                   help="skip METEOR (default: run the METEOR 1.5 jar, one JVM for the corpus)")
    p.add_argument("--json", help="also write the scores to this file (default: stdout only)")
    return p  # fmt: skip


def run(args) -> int:
    if args.lang not in moses_languages():  # a typo would score with other tokenisation rules
        raise CorpusError(f"--lang {args.lang!r}: not a language with Moses rules ({' '.join(moses_languages())})")
    if args.json:
        check_output_file(args.json, "--json")
    meteor = Meteor(args.lang) if args.meteor else None  # a missing runtime fails before any scoring
    hyps = read_hypotheses(args.hyp)
    refs = read_lines(args.ref)
    check_counts(args.hyp, hyps, args.ref, refs, "references")
    annotations = None
    if args.annotations:
        from ..toy_world import read_annotations

        annotations = read_annotations(args.annotations)
        check_counts(args.hyp, hyps, args.annotations, annotations, "annotated sentences")
    result = score(hyps, refs, args.lang, args.lowercase, annotations, meteor)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

"""The Multi30k table of benchmarks/multi30k_nmt.sh: per test set and system,
BLEU (detokenised and the reference's tokenised lowercased), chrF and METEOR
as vtlm-score wrote them, the mean over the seeds' work folders (with their
spread where there are several), and the score signatures.

    python benchmarks/multi30k_table.py work_dirs/multi30k [work_dirs/multi30k-seed2 ...]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

SYSTEMS = [
    ("fairseq_translation", "fairseq `translation` task"),
    ("ours_nmt", "our `multimodal_translation`, no images"),
    ("ours_nmt_from_tlm", "ours, fine-tuned from TLM"),
]
TEST_SETS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
METRICS = [("bleu_detok", "BLEU"), ("bleu_tok_lc", "BLEU tok lc"), ("chrf", "chrF"), ("meteor", "METEOR")]


def cell(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(work_dirs):
    lines, signatures = [], {}
    seeds = len(work_dirs)
    lines.append(f"Mean of {seeds} seed{'s' if seeds > 1 else ''} (± standard deviation across seeds)"
                 if seeds > 1 else "One seed")  # fmt: skip
    for split in TEST_SETS:
        lines += ["", f"**{split}**", "", "| system | " + " | ".join(label for _, label in METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|"]  # fmt: skip
        for name, label in SYSTEMS:
            scores = [json.loads(p.read_text()) for w in work_dirs
                      if (p := Path(w) / "results" / f"{name}.{split}.score.json").exists()]  # fmt: skip
            if not scores:
                continue
            for s in scores:
                signatures.update({k: v for k, v in s.items() if k.endswith("_signature")})
            row = [cell([s[key] for s in scores if key in s]) for key, _ in METRICS]
            lines.append(f"| {label} ({len(scores)}) | " + " | ".join(row) + " |")
    lines += [""] + [f"- {k}: `{v}`" for k, v in sorted(signatures.items())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", nargs="+", help="work folders of multi30k_nmt.sh, one per seed")
    args = parser.parse_args(argv)
    missing = [w for w in args.work_dirs if not (Path(w) / "results").is_dir()]
    if missing:
        print(f"{missing[0]}: no results/ folder (run benchmarks/multi30k_nmt.sh there first)", file=sys.stderr)
        return 2
    print(table(args.work_dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The table of examples/multi30k/grounding.sh from the probe suite's rows:
per system, BLEU of the plain sources and of the sources with their entity
words masked ([MASK]), the recall of the masked entities, with the correct
images, another sentence's images (shuffled) and none, the recall as a
multiple of the NMT's and of the NMT fine-tuned from TLM, and issue 16's
targets (what shuffled images cost is measured on the masked sources, where
the image is needed; on plain sources too, for comparison).

    python examples/multi30k/grounding_table.py WORK/probes/probes.json
"""

import json
import sys
from pathlib import Path

NMT, NMT_TLM = "nmt", "nmt_tlm"


def lookup(rows, model, images, mode):
    for r in rows:
        if r["model"] == model and r.get("images") == images and r["mode"] == mode:
            return r
    return None


def _pct(row) -> str:
    return "-" if row is None else f"{row['entity_recall']:.1f}%"


def _bleu(row) -> str:
    return "-" if row is None else f"{row['bleu_detok']:.2f}"


def _times(row, base) -> str:
    if row is None or base is None or not base["entity_recall"]:
        return "-"
    return f"{row['entity_recall'] / base['entity_recall']:.1f}x"


def table(rows) -> str:
    rows = [r for r in rows if r.get("probe") == "entity_masking"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    nmt, nmt_tlm = lookup(rows, NMT, "none", "mask"), lookup(rows, NMT_TLM, "none", "mask")
    nmt_plain = lookup(rows, NMT, "none", "none")
    lines = ["| system | BLEU plain | BLEU plain, shuffled images | BLEU [MASK] | BLEU [MASK], shuffled images | "
             "entity recall [MASK] | shuffled images | no images | recall / NMT | recall / NMT from TLM | "
             "deleted entities: recall |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    checks = []
    for model in models:
        mmt = lookup(rows, model, "aligned", "none") is not None
        own = "aligned" if mmt else "none"
        plain, masked, deleted = (lookup(rows, model, own, mode) for mode in ("none", "mask", "delete"))
        shuffled_plain = lookup(rows, model, "shuffled", "none")
        shuffled, blind = lookup(rows, model, "shuffled", "mask"), lookup(rows, model, "none", "mask") if mmt else None
        lines.append(f"| {model} | {_bleu(plain)} | {_bleu(shuffled_plain)} | {_bleu(masked)} | {_bleu(shuffled)} | "
                     f"{_pct(masked)} | {_pct(shuffled)} | {_pct(blind)} | {_times(masked, nmt)} | "
                     f"{_times(masked, nmt_tlm)} | {_pct(deleted)} |")  # fmt: skip
        if mmt and None not in (nmt, nmt_tlm, nmt_plain, shuffled_plain, shuffled):
            kept = shuffled["entity_recall"] / max(masked["entity_recall"], 1e-9)
            checks.append(
                f"- {model}: recall {_times(masked, nmt)} the NMT's (target 5x), {_times(masked, nmt_tlm)} the "
                f"NMT-from-TLM's (2x); BLEU {plain['bleu_detok'] - nmt_plain['bleu_detok']:+.2f} vs the NMT "
                f"(>= -0.5); on masked sources shuffled images cost "
                f"{masked['bleu_detok'] - shuffled['bleu_detok']:.2f} BLEU (>= 2) and {100 * (1 - kept):.0f}% of "
                f"the recall (>= 50%); on plain sources {plain['bleu_detok'] - shuffled_plain['bleu_detok']:.2f} BLEU"
            )  # fmt: skip
    entities = (nmt or rows[0])["entities"]
    head = (f"BLEU (detokenised) of the plain sources and of the sources with their entity words masked; entity "
            f"recall: of the {entities} source entity words masked whose German word is in the reference, the "
            "share the translation has")
    return "\n".join([head, ""] + lines + ([""] + checks if checks else []))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: grounding_table.py PROBES.json (the probe suite's rows)", file=sys.stderr)
        return 2
    print(table(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

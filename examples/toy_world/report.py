"""Prints the toy-world results table (Markdown) from a results folder."""

import json
import sys
from pathlib import Path

results = Path(sys.argv[1])


def load(name):
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


print("## Translation (test, beam 8)\n")
print("| system | images | BLEU (detok) | BLEU (tok, lc) | chrF | METEOR | ambiguous-word acc. |")
print("|---|---|---|---|---|---|---|")
signatures = {}
for name, system, images in [
    ("mmt", "MMT from VTLM", "correct"),
    ("mmt_shuffled", "MMT from VTLM", "shuffled"),
    ("nmt", "NMT from VTLM", "none"),
]:
    s = load(f"{name}.score.json")
    if s:
        meteor = f"{s['meteor']:.2f}" if "meteor" in s else ""
        print(f"| {system} | {images} | {s['bleu_detok']:.2f} | {s['bleu_tok_lc']:.2f} | {s['chrf']:.2f} "
              f"| {meteor} | {s['ambiguous_word_accuracy']:.1f} |")
        signatures = {k: v for k, v in s.items() if k.endswith("signature")}
for key, signature in signatures.items():
    print(f"\n{key}: `{signature}`")

contrastive = (load("contrastive_nmt.json") or []) + (load("contrastive_mmt.json") or [])
if contrastive:
    print("\n## Contrastive evaluation (the toy world's test set: correct vs other sense)\n")
    print("| system | images | accuracy (per-token perplexity) | accuracy (summed log-prob) | examples |")
    print("|---|---|---|---|---|")
    for images in ("none", "aligned", "shuffled"):
        rows = [r for r in contrastive if r["images"] == images]
        if not rows:
            continue
        system = "NMT from VTLM" if images == "none" else "MMT from VTLM"
        cells = []
        for key in ("accuracy", "accuracy_sum"):
            vals = [100 * r[key] for r in rows]
            spread = f" (±{(max(vals) - min(vals)) / 2:.1f}, {len(vals)} seeds)" if len(vals) > 1 else ""
            cells.append(f"{sum(vals) / len(vals):.1f}%{spread}")
        print(f"| {system} | {images} | {cells[0]} | {cells[1]} | {rows[0]['examples']} |")

regions = load("probe_regions.json")
if regions:
    r = regions[0]
    print("\n## Pre-trained VTLM: masked region classification (valid)\n")
    print(f"accuracy {r['mrc_acc']:.1f}% on {r['regions']} regions; majority class {r['majority_acc']:.1f}%")

ambiguous = load("probe_ambiguous.json")
if ambiguous:
    print("\n## Pre-trained VTLM: restoring masked ambiguous words (valid)\n")
    print("| masked | images | English acc. | German acc. |")
    print("|---|---|---|---|")
    for condition in ("en", "de", "de_np", "both"):
        rows = [r for r in ambiguous if r["masked"] == condition]
        for images in ("aligned", "shuffled"):
            sel = [r for r in rows if r["images"] == images]
            if not sel:
                continue
            cells = []
            for lang in ("en", "de"):
                vals = [r[f"{lang}_acc"] for r in sel if f"{lang}_acc" in r]
                cells.append("" if not vals else f"{sum(vals) / len(vals):.1f}"
                             + (f" (±{(max(vals) - min(vals)) / 2:.1f}, {len(vals)} seeds)" if len(vals) > 1 else ""))
            print(f"| {condition} | {images} | {cells[0]} | {cells[1]} |")

"""The probe suite: every probe over a set of pre-trained and fine-tuned
checkpoints, written as JSON, a Markdown report and PNG plots."""

import json
import logging
from pathlib import Path
from statistics import mean, pstdev
from typing import Dict, List, Optional, Sequence

from ..errors import InputError
from ..hub import load_checkpoint
from ..output_paths import output_folder
from .masked_words import last_word_probe, probe_ambiguous_words
from ..data.words import EntityWords
from .translation import entity_masking_probe, incongruent_decoding, raw_references

logger = logging.getLogger(__name__)


def run_suite(
    pretrained: Dict[str, str],
    translation: Dict[str, str],
    out_dir,
    overrides: Optional[dict] = None,
    split: str = "test",
    pretrained_split: str = "valid",
    words: Optional[EntityWords] = None,
    annotations: Optional[Dict[str, list]] = None,  # split -> toy world annotations
    seeds: Sequence[int] = (1, 2, 3),
    references: Optional[str] = None,
    beam: int = 8,
) -> List[dict]:
    """Runs every probe; returns the rows (each tagged with its model)."""
    if not pretrained and not translation:
        raise InputError("no checkpoints to probe: give pre-trained and/or translation checkpoints")
    if not seeds:
        raise InputError("no seeds for the shuffled images: give at least one")
    annotations = annotations or {}
    unused = sorted(set(annotations) - {split, pretrained_split})
    if unused:
        raise InputError(f"annotations of split(s) {', '.join(unused)}, which no probe reads "
                         f"(the splits are {pretrained_split} and {split})")  # fmt: skip
    # before hours of probing, not after
    missing = [path for path in (*pretrained.values(), *translation.values()) if not Path(path).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such checkpoint")
    out_dir = output_folder(out_dir, "the suite's output folder")
    words = words or EntityWords.load()
    rows: List[dict] = []
    for name, checkpoint in pretrained.items():
        logger.info("pre-trained %s: %s", name, checkpoint)
        model, task, kind = load_checkpoint(checkpoint, overrides, kinds=("TLM", "VTLM"),
                                            purpose="vtlm-probe suite --pretrained")  # fmt: skip
        orders = ("aligned", "shuffled") if kind == "VTLM" else ("aligned",)
        found = last_word_probe(model, task, pretrained_split, image_orders=orders, seeds=tuple(seeds))
        if pretrained_split in annotations:
            found += [dict(r, probe="ambiguous_words") for r in probe_ambiguous_words(
                model, task, pretrained_split, annotations[pretrained_split], image_orders=orders, seeds=tuple(seeds))]
        rows += [dict(r, model=name, kind=kind) for r in found]
    for name, checkpoint in translation.items():
        logger.info("translation %s: %s", name, checkpoint)
        model, task, kind = load_checkpoint(checkpoint, overrides, kinds=("NMT", "MMT"),
                                            purpose="vtlm-probe suite --translation")  # fmt: skip
        refs = raw_references(task, split, references)
        # an MMT also with shuffled and with no images: what the image adds to the entities it recovers
        images = ("aligned", "shuffled", "none") if kind == "MMT" else ("none",)
        found = entity_masking_probe(model, task, split, words, refs, beam=beam, annotations=annotations.get(split),
                                     images=images, seed=seeds[0])  # fmt: skip
        if kind == "MMT":
            found += incongruent_decoding(model, task, split, refs, seed=seeds[0], beam=beam,
                                          annotations=annotations.get(split))  # fmt: skip
        rows += [dict(r, model=name, kind=kind) for r in found]
    (out_dir / "probes.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "probes.md").write_text(markdown_report(rows))
    from .plots import plot_suite

    for path in plot_suite(rows, out_dir):
        logger.info("wrote %s", path)
    logger.info("wrote %s and %s", out_dir / "probes.md", out_dir / "probes.json")
    return rows


def summarise_seeds(rows: List[dict], keys: Sequence[str], metric: str) -> List[dict]:
    """Rows grouped by ``keys`` with the mean and spread of ``metric`` over
    seeds (shuffled images have one row per seed)."""
    groups: Dict[tuple, List[float]] = {}
    for row in rows:
        if metric in row:
            groups.setdefault(tuple(row.get(k) for k in keys), []).append(row[metric])
    return [dict(zip(keys, k), mean=mean(v), std=pstdev(v) if len(v) > 1 else 0.0, n=len(v))
            for k, v in groups.items()]  # fmt: skip


def _cell(summary: dict) -> str:
    return f"{summary['mean']:.1f}" + (f" ± {summary['std']:.1f}" if summary["n"] > 1 else "")


def _pct(value) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown_report(rows: List[dict]) -> str:
    out = ["# Probe suite", ""]
    for probe, title in (("last_word", "Masked last word (pre-trained models)"),
                         ("ambiguous_words", "Masked ambiguous words (pre-trained models, toy world)")):  # fmt: skip
        chosen = [r for r in rows if r.get("probe") == probe]
        if not chosen:
            continue
        out += [f"## {title}", "", "accuracy % (perplexity); shuffled images: mean ± std over seeds", "",
                "| model | masked | images | en | de |", "|---|---|---|---|---|"]  # fmt: skip
        keys = ("model", "masked", "images")
        acc = {tuple(s[k] for k in keys) + (m,): s for m in ("en_acc", "de_acc")
               for s in summarise_seeds(chosen, keys, m)}  # fmt: skip
        ppl = {tuple(s[k] for k in keys) + (m,): s for m in ("en_ppl", "de_ppl")
               for s in summarise_seeds(chosen, keys, m)}  # fmt: skip
        seen = []
        for r in chosen:
            key = tuple(r[k] for k in keys)
            if key in seen:
                continue
            seen.append(key)
            cells = []
            for lang in ("en", "de"):
                a = acc.get(key + (f"{lang}_acc",))
                p = ppl.get(key + (f"{lang}_ppl",))
                cells.append("" if a is None else _cell(a) + (f" ({p['mean']:.2f})" if p else ""))
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {cells[0]} | {cells[1]} |")
        out.append("")
    masking = [r for r in rows if r.get("probe") == "entity_masking"]
    if masking:
        amb = any("ambiguous_acc" in r for r in masking)
        out += ["## Entity masking (translation models)", "",
                "source entity words: none, replaced by [MASK], [MASK] with a zeroed embedding, deleted; "
                "recall = masked entities whose German word is in the translation (of those in the reference); "
                "images: the MMT's own (aligned), another sentence's (shuffled) or none", "",
                "| model | kind | images | source | BLEU (detok) | BLEU (tok, lc) | entity recall % |"
                + (" ambiguous acc % |" if amb else ""),
                "|---|---|---|---|---|---|---|" + ("---|" if amb else "")]  # fmt: skip
        for r in masking:
            out.append(f"| {r['model']} | {r['kind']} | {r.get('images', '-')} | {r['mode']} | {r['bleu_detok']:.2f} | "
                       f"{r['bleu_tok_lc']:.2f} | "
                       f"{r['entity_recall']:.1f} ({r['entities']}) |" + (f" {_pct(r.get('ambiguous_acc'))} |" if amb else ""))  # fmt: skip
        out.append("")
    incongruent = [r for r in rows if r.get("probe") == "incongruent"]
    if incongruent:
        amb = any("ambiguous_acc" in r for r in incongruent)
        out += ["## Incongruent decoding (MMT)", "",
                "| model | images | BLEU (detok) | BLEU (tok, lc) |" + (" ambiguous acc % |" if amb else ""),
                "|---|---|---|---|" + ("---|" if amb else "")]  # fmt: skip
        for r in incongruent:
            out.append(f"| {r['model']} | {r['images']} | {r['bleu_detok']:.2f} | {r['bleu_tok_lc']:.2f} |"
                       + (f" {_pct(r.get('ambiguous_acc'))} |" if amb else ""))  # fmt: skip
        out.append("")
    return "\n".join(out)

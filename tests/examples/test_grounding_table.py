"""The grounding recipe's table: recalls and their ratios from probe rows."""

import importlib.util

from tests.conftest import REPO


def load_table():
    spec = importlib.util.spec_from_file_location("grounding_table", REPO / "examples/multi30k/grounding_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.table


def row(model, images, mode, bleu, recall, kind):
    return {"probe": "entity_masking", "model": model, "kind": kind, "images": images, "mode": mode,
            "bleu_detok": bleu, "bleu_tok_lc": bleu, "entity_recall": recall, "entities": 1306}  # fmt: skip


def test_table_ratios_and_targets():
    rows = [row("nmt", "none", m, b, r, "NMT") for m, b, r in (("none", 16.0, 0), ("mask", 12.0, 5.0), ("delete", 11.0, 4.0))]
    rows += [row("nmt_tlm", "none", m, b, r, "NMT") for m, b, r in (("none", 19.0, 0), ("mask", 15.0, 10.0))]
    for images, plain, masked, recall in (("aligned", 18.0, 15.0, 40.0), ("shuffled", 15.0, 11.0, 12.0),
                                          ("none", 14.0, 10.0, 8.0)):  # fmt: skip
        rows += [row("mmt", images, "none", plain, 0, "MMT"), row("mmt", images, "mask", masked, recall, "MMT")]
    text = load_table()(rows)
    mmt = next(line for line in text.splitlines() if line.startswith("| mmt |"))
    cells = [c.strip() for c in mmt.strip("|").split("|")]
    assert cells == ["mmt", "18.00", "15.00", "15.00", "11.00", "40.0%", "12.0%", "8.0%", "8.0x", "4.0x", "-"]
    check = next(line for line in text.splitlines() if line.startswith("- mmt:"))
    assert "recall 8.0x the NMT's" in check and "4.0x the NMT-from-TLM's" in check
    assert "BLEU +2.00 vs the NMT" in check and "70% of the recall" in check
    assert "on masked sources shuffled images cost 4.00 BLEU" in check and "on plain sources 3.00 BLEU" in check
    nmt = next(line for line in text.splitlines() if line.startswith("| nmt |"))
    assert [c.strip() for c in nmt.strip("|").split("|")][3:9] == ["12.00", "-", "5.0%", "-", "-", "1.0x"]

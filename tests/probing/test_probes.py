import json

import pytest
import torch

from tests.probing.probe_helpers import run_probe
from vtlm_fairseq.data.words import normalise, word_spans
from vtlm_fairseq.probing.masked_words import SpanMaskedDataset, ambiguous_word_spans
from vtlm_fairseq.toy_world import read_annotations


@pytest.fixture(scope="module")
def checkpoint(vtlm_checkpoint):
    return vtlm_checkpoint


def test_word_spans_join_bpe_pieces():
    class D(list):
        def eos(self):
            return 0

    d = D(["</s>", "ein", "fleder@@", "ma@@", "us", "ist", "."])
    assert word_spans(d, [1, 2, 3, 4, 5, 6, 0]) == [
        ("ein", 0, 1), ("fledermaus", 1, 4), ("ist", 4, 5), (".", 5, 6)
    ]  # fmt: skip


def test_span_masking_marks_exactly_the_word(checkpoint, toy_data):
    from vtlm_fairseq.hub import load_checkpoint

    data, store, world = toy_data
    model, task, _ = load_checkpoint(str(checkpoint), {"data": str(data), "region_features": str(store)})
    task.cfg.mask_prob = 0.0
    task.load_dataset("valid")
    base = task.dataset("valid")
    annotations = read_annotations(world / "ambiguity" / "valid.jsonl")
    spans = ambiguous_word_spans(task, base, annotations, "both")
    assert len(spans) == sum(1 for a in annotations if a)
    ds = SpanMaskedDataset(base, spans)
    index = sorted(spans)[0]
    item = ds[index]
    masked = item["target"].ne(task.dictionary.pad())
    assert (item["source"][masked] == task.mask_idx).all()
    restored = {}
    for pos in torch.nonzero(masked).flatten().tolist():
        span = int(item["span_ids"][pos])
        restored[span] = restored.get(span, "") + task.dictionary[int(item["target"][pos])].replace("@@", "")
    pair = int(base.pair_indices[index])
    expected = {normalise(a[key]).replace(" ", "") for a in annotations[pair] for key in ("en", "de_np")}
    assert set(restored.values()) == expected
    assert int((item["span_ids"] >= 0).sum()) == int(masked.sum())


def test_probe_commands(checkpoint, toy_data, tmp_path, capsys):
    data, store, world = toy_data
    common = [str(checkpoint), "--data", str(data), "--region-features", str(store)]
    assert run_probe(["ambiguous"] + common + ["--annotations", str(world / "ambiguity" / "valid.jsonl"),
                    "--seeds", "1", "2", "--json", str(tmp_path / "amb.json")]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["images"], r["masked"]) for r in rows] == [
        (order, m) for order in ("aligned", "shuffled", "shuffled") for m in ("en", "de", "de_np", "both")
    ]
    assert all(0 <= r.get("en_acc", 0) <= 100 and 0 <= r.get("de_acc", 0) <= 100 for r in rows)
    assert rows[0]["en_words"] == rows[3]["en_words"] == rows[3]["de_words"] == rows[2]["de_words"] > 0
    assert json.loads((tmp_path / "amb.json").read_text()) == rows

    assert run_probe(["regions"] + common) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["regions"] > 0 and 0 <= row["mrc_acc"] <= 100 and 0 < row["majority_acc"] <= 100

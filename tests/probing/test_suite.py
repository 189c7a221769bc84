"""The probe suite on tiny toy-world checkpoints: masked last words,
entity-masked translation (mask / zeroed mask / delete), incongruent
decoding, the report, the plots and the attention picture."""

import json

import pytest
import torch

from tests.probing.probe_helpers import run_probe
from vtlm_fairseq.data.words import EntityWords
from vtlm_fairseq.probing.translation import EntityMaskedSource, recovery


@pytest.fixture(scope="module")
def mmt_task(toy_data, mmt_checkpoint):
    from vtlm_fairseq.hub import load_checkpoint

    data, store, _ = toy_data
    return load_checkpoint(str(mmt_checkpoint), {"data": str(data), "region_features": str(store)})


def test_entity_words_from_package_and_toy_lexicon(toy_data):
    multi30k = EntityWords.load()
    assert {"mann", "manner"} <= multi30k.german["man"]
    assert multi30k.german["dogs"] >= {"hunde"}
    toy = EntityWords.load(toy_data[2] / "lexicon.json")
    assert toy.german["bat"] == {"fledermaus", "schlager"}  # both senses, normalised


def test_entity_masking_modes_edit_only_entity_words(toy_data, mmt_task):
    model, task, _ = mmt_task
    words = EntityWords.load(toy_data[2] / "lexicon.json")
    task.load_dataset("test")
    base = task.dataset("test")
    d = task.source_dictionary
    for mode in ("mask", "delete"):
        ds = EntityMaskedSource(base, d, words, mode, task.mask_idx)
        for i in range(len(base)):
            before, after = d.string(base[i]["source"], "@@ ").split(), d.string(ds[i]["source"], "@@ ").split()
            assert ds[i]["source"][0] == d.eos()  # the leading </s> stays
            replaced = [] if mode == "delete" else ["<mask>"]
            assert after == [x for w in before for x in (replaced if w in words.german else [w])]
            assert ds.masked[i] == [w for w in before if w in words.german]
        assert sum(map(len, ds.masked)) > len(base) // 2  # toy captions name objects
    # the target side and the regions are untouched
    item, edited = base[0], EntityMaskedSource(base, d, words, "mask", task.mask_idx)[0]
    assert torch.equal(item["target"], edited["target"])
    assert torch.equal(item["regions"]["features"], edited["regions"]["features"])


def test_recovery_counts_only_entities_in_the_reference():
    words = EntityWords({"dog": {"hund"}, "cat": {"katze"}})
    hyps = ["ein hund läuft .", "eine frau ."]
    refs = ["ein hund läuft .", "eine katze ."]
    assert recovery(hyps, refs, [["dog"], ["cat", "dog"]], words) == (1, 2)


def test_zeroed_mask_embedding_is_restored(mmt_task):
    from vtlm_fairseq.probing.translation import zeroed_mask_embedding

    model, task, _ = mmt_task
    before = model.encoder.embed_tokens.weight[task.mask_idx].clone()
    with zeroed_mask_embedding(model, task.mask_idx):
        assert model.encoder.embed_tokens.weight[task.mask_idx].abs().sum() == 0
    assert torch.equal(model.encoder.embed_tokens.weight[task.mask_idx], before)


def test_suite_command_writes_report_and_plots(toy_data, vtlm_checkpoint, mmt_checkpoint, nmt_checkpoint,
                                               tmp_path, capsys):  # fmt: skip
    data, store, world = toy_data
    out = tmp_path / "suite"
    assert run_probe([
        "suite", "--pretrained", f"VTLM={vtlm_checkpoint}", "--translation", f"MMT={mmt_checkpoint}",
        f"NMT={nmt_checkpoint}", "--data", str(data), "--region-features", str(store), "--out", str(out),
        "--words", str(world / "lexicon.json"), "--annotations", f"valid={world}/ambiguity/valid.jsonl",
        f"test={world}/ambiguity/test.jsonl", "--seeds", "1", "2", "--beam", "2",
    ]) == 0  # fmt: skip
    rows = json.loads((out / "probes.json").read_text())
    kinds = {(r["model"], r["probe"]) for r in rows}
    assert kinds == {("VTLM", "last_word"), ("VTLM", "ambiguous_words"), ("MMT", "entity_masking"),
                     ("NMT", "entity_masking"), ("MMT", "incongruent")}  # fmt: skip
    last = [r for r in rows if r["probe"] == "last_word"]
    assert [(r["images"], r["masked"]) for r in last] == [
        (o, m) for o in ("aligned", "shuffled", "shuffled") for m in ("en", "de", "both")]
    assert all(r["en_ppl"] >= 1 for r in last if "en_ppl" in r)
    masking = [r for r in rows if r["probe"] == "entity_masking" and r["model"] == "MMT"]
    # the MMT with its images, another sentence's and none: what the image adds
    assert [(r["images"], r["mode"]) for r in masking] == [
        (images, mode) for images in ("aligned", "shuffled", "none") for mode in ("none", "mask", "zero", "delete")]
    assert all(0 <= r["entity_recall"] <= 100 and r["entities"] > 0 and "ambiguous_acc" in r for r in masking)
    assert {r["images"] for r in rows if r["probe"] == "entity_masking" and r["model"] == "NMT"} == {"none"}
    assert [r["images"] for r in rows if r["probe"] == "incongruent"] == ["aligned", "shuffled", "reversed"]
    report = (out / "probes.md").read_text()
    for title in ("Masked last word", "Entity masking", "Incongruent decoding"):
        assert title in report
    for png in ("last_word.png", "ambiguous_words.png", "entity_masking.png", "incongruent.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_attention_picture(toy_data, mmt_checkpoint, tmp_path, capsys):
    from vtlm_fairseq.probing.attention import region_attention

    data, store, _ = toy_data
    assert run_probe(["attention", str(mmt_checkpoint), "--data", str(data), "--region-features", str(store),
                    "--index", "0", "3", "--out", str(tmp_path / "att.png")]) == 0  # fmt: skip
    assert (tmp_path / "att_0.png").stat().st_size > 10_000 and (tmp_path / "att_3.png").exists()
    from vtlm_fairseq.hub import load_checkpoint

    model, task, _ = load_checkpoint(str(mmt_checkpoint), {"data": str(data), "region_features": str(store)})
    result = region_attention(model, task, "test", 0)
    att = result["attention"]
    assert att.shape == (len(result["target_tokens"]), 12)  # TINY_WORLD: 12 regions
    assert abs(att.sum(-1) - 1).max() < 1e-5
    assert result["classes"] is not None and len(result["boxes"]) == 12

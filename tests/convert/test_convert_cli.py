"""The user's path with a released checkpoint: vtlm-convert-checkpoint, text
binarised with the converted dictionary, then fairseq-generate (the MMT gives
the reference's own beam-search outputs) and fairseq-train fine-tuning
initialised from the converted VTLM."""

import shutil

import pytest
import torch

from tests.conftest import REPO, run_fairseq, shared_path


@pytest.fixture(scope="module")
def reference_setup(reference_store, tmp_path_factory):
    """(work dir, feature store, data-bin) for the fixtures' toy corpus."""
    root, store = reference_store
    work = tmp_path_factory.mktemp("reference_cli")
    for kind, name in (("vtlm", "vtlm_pretrained"), ("mmt", "mmt_finetuned_from_vtlm")):
        out = run_fairseq("vtlm-convert-checkpoint", [root / "checkpoints" / f"{name}.pth", work / kind,
                                                      "--region-features", store])  # fmt: skip
        assert f"({kind.upper()})" in out and "not mapped" in out
    # the toy corpus is tokenised and has no BPE pieces: binarise it as is
    raw = root / "toy_data" / "data"
    text = work / "text"
    text.mkdir()
    for split in ("train", "valid"):
        for lang in ("en", "de"):
            shutil.copy(raw / f"{split}.de-en.{lang}", text / f"{split}.{lang}")
    data = work / "data-bin"
    run_fairseq("fairseq-preprocess", ["--source-lang", "en", "--target-lang", "de", "--joined-dictionary",
                                       "--srcdict", work / "mmt" / "dict.txt", "--trainpref", text / "train",
                                       "--validpref", text / "valid", "--destdir", data])  # fmt: skip
    for split in ("train", "valid"):
        shutil.copy(raw / f"{split}.order", data / f"{split}.order")
    return work, store, data


def test_converted_mmt_decodes_with_fairseq_generate_as_reference(reference_setup):
    work, store, data = reference_setup
    ref = torch.load(shared_path("fixtures", "reference_vtlm", "reference_mmt.pt"), weights_only=True)
    out = run_fairseq("fairseq-generate", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation", "--region-features", store,
        "--path", work / "mmt" / "checkpoint.pt", "--gen-subset", "valid", "--beam", "3", "--lenpen", "1.0",
        "--max-len-a", "1.5", "--max-len-b", "8", "--batch-size", "4", "--cpu",
    ])  # fmt: skip
    hyps = {int(l.split("\t")[0][2:]): l.split("\t")[2] for l in out.splitlines() if l.startswith("H-")}
    assert len(hyps) == 6  # every valid sentence, batch 4 (fairseq would drop 2)
    for line, expected in zip(ref["meta__line_ids"], ref["meta__beam_text"]):
        assert hyps[line] == expected, f"valid line {line}"


def test_finetuning_from_converted_vtlm(reference_setup, tmp_path):
    work, store, data = reference_setup
    out = run_fairseq("fairseq-train", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation", "--region-features", store,
        "--arch", "vtlm_translation_base", "--encoder-layers", "2", "--encoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "128", "--encoder-attention-heads", "4", "--no-region-box-bias",
        "--pretrained-checkpoint", work / "vtlm" / "checkpoint.pt", "--optimizer", "adam", "--lr", "1e-4",
        "--batch-size", "8", "--max-update", "2", "--cpu", "--save-dir", tmp_path, "--disable-validation",
    ])  # fmt: skip
    assert "initialised from" in out
    # everything but the decoder's cross-attention LayerNorms comes from the file
    fresh = out.split("fresh: ", 1)[1].split(";")[0]
    assert all("encoder_attn_layer_norm" in name for name in fresh.split(", ")), fresh
    assert (tmp_path / "checkpoint_last.pt").exists()

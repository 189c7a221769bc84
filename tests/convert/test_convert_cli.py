"""The user's path with a released checkpoint: vtlm-convert-checkpoint, text
binarised with the converted dictionary, then fairseq-generate (the MMT gives
the reference's own beam-search outputs) and fairseq-train fine-tuning
initialised from the converted VTLM."""

import json
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
    splits = ("train", "valid", "test")
    for split in splits:
        for lang in ("en", "de"):
            shutil.copy(raw / f"{split}.de-en.{lang}", text / f"{split}.{lang}")
    data = work / "data-bin"
    run_fairseq("fairseq-preprocess", ["--source-lang", "en", "--target-lang", "de", "--joined-dictionary",
                                       "--srcdict", work / "mmt" / "dict.txt", "--trainpref", text / "train",
                                       "--validpref", text / "valid", "--testpref", text / "test",
                                       "--destdir", data])  # fmt: skip
    for split in splits:
        shutil.copy(raw / f"{split}.order", data / f"{split}.order")
    return work, store, data


def option_values(argv, names):
    """The given options of a command line, with their values (flags alone)."""
    out = []
    for i, arg in enumerate(argv):
        if arg in names:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            out += [arg, argv[i + 1]] if has_value else [arg]
    return out


def test_converted_mmt_decodes_with_fairseq_generate_as_reference(reference_setup):
    work, store, data = reference_setup
    root = shared_path("fixtures", "reference_vtlm")
    ref = torch.load(root / "reference_mmt.pt", weights_only=True)
    valid = len((root / "toy_data" / "data" / f"{ref['meta__split']}.de-en.en").read_text().splitlines())
    # a batch size that leaves a remainder, which fairseq would drop
    batch = next((b for b in range(valid - 1, 1, -1) if valid % b), 1)
    out = run_fairseq("fairseq-generate", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation", "--region-features", store,
        "--path", work / "mmt" / "checkpoint.pt", "--gen-subset", ref["meta__split"],
        "--beam", ref["meta__beam_size"], "--lenpen", ref["meta__length_penalty"],
        # their max_len 1.5 x source + 10 counts the start symbol, fairseq allows one more step
        "--max-len-a", "1.5", "--max-len-b", "8", "--batch-size", batch, "--cpu",
    ])  # fmt: skip
    hyps = {int(l.split("\t")[0][2:]): l.split("\t")[2] for l in out.splitlines() if l.startswith("H-")}
    assert sorted(hyps) == list(range(valid))  # every sentence, the remainder batch too
    for line, expected in zip(ref["meta__line_ids"], ref["meta__beam_text"]):
        assert hyps[line] == expected, f"{ref['meta__split']} line {line}"


def test_finetuning_from_converted_vtlm(reference_setup, tmp_path):
    work, store, data = reference_setup
    # the shape of the converted encoder, as conversion.json tells it
    converted = json.loads((work / "vtlm" / "conversion.json").read_text())["fairseq_args"]
    shape = option_values(converted, {"--encoder-layers", "--encoder-embed-dim", "--encoder-ffn-embed-dim",
                                      "--encoder-attention-heads", "--no-region-box-bias", "--region-layer-norm"})
    assert "--encoder-embed-dim" in shape
    out = run_fairseq("fairseq-train", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation", "--region-features", store,
        "--arch", "vtlm_translation_base", *shape,
        "--pretrained-checkpoint", work / "vtlm" / "checkpoint.pt", "--optimizer", "adam", "--lr", "1e-4",
        "--batch-size", "8", "--max-update", "2", "--cpu", "--save-dir", tmp_path, "--disable-validation",
    ])  # fmt: skip
    assert "initialised from" in out
    # everything but the decoder's cross-attention LayerNorms comes from the file
    fresh = out.split("fresh: ", 1)[1].split(";")[0]
    assert all("encoder_attn_layer_norm" in name for name in fresh.split(", ")), fresh
    assert (tmp_path / "checkpoint_last.pt").exists()

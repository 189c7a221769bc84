import re

import pytest
import torch

from tests.conftest import REPO, run_fairseq, setup_fairseq
from vtlm_fairseq.data.feature_store import FeatureStore

USER_DIR = ["--user-dir", REPO / "vtlm_fairseq"]


@pytest.fixture(scope="module")
def mmt(mmt_checkpoint):
    return mmt_checkpoint


@pytest.fixture(scope="module")
def nmt(nmt_checkpoint):
    return nmt_checkpoint


def generate(toy_data, checkpoint, *extra, features=True):
    data, store, _ = toy_data
    args = [data, *USER_DIR, "--task", "multimodal_translation", "--path", checkpoint, "--gen-subset", "test",
            "--beam", "3", "--batch-size", "8", "--cpu", *extra]  # fmt: skip
    if features:
        args += ["--region-features", store]
    return run_fairseq("fairseq-generate", args)


def hypotheses(log):
    return [(int(m.group(1)), m.group(2)) for m in re.finditer(r"^H-(\d+)\t[^\t]*\t(.*)$", log, re.M)]


@pytest.mark.parametrize("kind", ["mmt", "nmt"])
def test_generate_translates_every_sentence_in_corpus_order(toy_data, kind, request):
    checkpoint = request.getfixturevalue(kind)
    log = generate(toy_data, checkpoint, features=kind == "mmt")
    ids = [i for i, _ in hypotheses(log)]
    assert ids == list(range(21))  # 21 test pairs, batches of 8: nothing dropped


def test_shuffled_images_at_decoding(toy_data, mmt):
    data, store, _ = toy_data
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features", str(store),
                             "--image-order", "shuffled", "--arch", "vtlm_translation_tiny"])  # fmt: skip
    task.load_dataset("test")
    shuffled = task.dataset("test").regions.rows
    order = (data / "test.order").read_text().split()
    aligned = [FeatureStore(store).index[n] for n in order]
    assert sorted(shuffled.tolist()) == sorted(aligned) and shuffled.tolist() != aligned
    log = generate(toy_data, mmt, "--image-order", "shuffled")
    assert len(hypotheses(log)) == 21


def test_interactive_with_an_image_per_line(toy_data, mmt):
    data, store, world = toy_data
    order = (data / "test.order").read_text().split()
    raw = (world / "raw" / "test.en").read_text().splitlines()
    tok = (data / "bpe" / "test.en").read_text().splitlines()
    lines = "".join(f"{order[i]}\t{tok[i]}\n" for i in range(5))
    args = [data, *USER_DIR, "--task", "multimodal_translation", "--region-features", store, "--path", mmt,
            "--beam", "2", "--batch-size", "2", "--buffer-size", "3", "--cpu"]  # fmt: skip
    log = run_fairseq("fairseq-interactive", args, input=lines)
    assert len(hypotheses(log)) == 5
    # the same sentences through fairseq-generate (same images) give the same output
    gen = dict(hypotheses(generate(toy_data, mmt, "--beam", "2")))
    inter = dict(hypotheses(log))
    assert all(inter[i] == gen[i] for i in range(5)), (inter, gen, raw[:5])


def test_interactive_line_without_image_is_an_error(toy_data, mmt):
    import subprocess

    from tests.conftest import fairseq_command

    data, store, _ = toy_data
    proc = subprocess.run(
        [fairseq_command("fairseq-interactive"), str(data), "--user-dir", str(REPO / "vtlm_fairseq"),
         "--task", "multimodal_translation", "--region-features", str(store), "--path", str(mmt), "--cpu"],
        input="a sentence without an image\n", capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "expected 'IMAGE_NAME<TAB>sentence'" in proc.stderr


def test_hub_interface(toy_data, mmt, nmt):
    from vtlm_fairseq.hub import VTLMTranslator

    data, store, world = toy_data
    mt = VTLMTranslator.from_pretrained(str(mmt.parent), "checkpoint_last.pt", data=str(data),
                                        region_features=str(store), beam=2)  # fmt: skip
    order = (data / "test.order").read_text().split()
    raw = (world / "raw" / "test.en").read_text().splitlines()
    one = mt.translate(raw[0], images=order[0])
    assert isinstance(one, str)
    both = mt.translate(raw[:2], images=order[:2])
    assert both[0] == one and len(both) == 2
    assert mt.translate(raw[0], images=FeatureStore(store).read(order[0])) == one
    with pytest.raises(ValueError, match="give an image"):
        mt.translate(raw[0])
    text_only = VTLMTranslator.from_pretrained(str(nmt.parent), "checkpoint_last.pt", data=str(data), beam=2)
    assert isinstance(text_only.translate(raw[0]), str)
    with pytest.raises(ValueError, match="without images"):
        text_only.translate(raw[0], images=order[0])


def test_missing_images_drop_policy(toy_data, tmp_path):
    import shutil

    data, store, _ = toy_data
    local = tmp_path / "bin"
    shutil.copytree(data, local)
    order = (local / "valid.order").read_text().splitlines()
    order[2] = "gone.jpg"
    (local / "valid.order").write_text("\n".join(order) + "\n")
    _, task = setup_fairseq([str(local), "--task", "multimodal_translation", "--region-features", str(store),
                             "--missing-images", "drop", "--arch", "vtlm_translation_tiny"])  # fmt: skip
    task.load_dataset("valid")
    ds = task.dataset("valid")
    assert len(ds) == 36 and 2 not in ds.pair_indices
    batch = ds.collater([ds[i] for i in range(4)])
    assert batch["id"].tolist() == [0, 1, 2, 3]  # corpus order within the batch
    rows = FeatureStore(store).index
    assert torch.equal(batch["net_input"]["region_mask"].sum(1) > 0, torch.ones(4, dtype=torch.bool))
    assert rows[order[3]] == ds.regions.rows[ds.pair_indices[2]]


def test_validate_scores_every_pair(toy_data, mmt):
    data, store, _ = toy_data
    log = run_fairseq("fairseq-validate", [data, *USER_DIR, "--task", "multimodal_translation",
                      "--region-features", store, "--path", mmt, "--valid-subset", "valid,test",
                      "--batch-size", "8", "--cpu"])  # fmt: skip
    # 37 and 21 pairs, batches of 8: the remainder batches count too
    assert re.search(r"valid on 'valid' subset .*\| bsz 37\b", log)
    assert re.search(r"valid on 'test' subset .*\| bsz 21\b", log)

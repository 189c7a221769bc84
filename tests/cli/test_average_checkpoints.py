"""vtlm-average-checkpoints: the mean of the checkpoints' tensors, a
checkpoint that loads and translates, and clear refusals."""

import pytest
import torch

from tests.conftest import REPO, TINY_DIMS, run_fairseq
from vtlm_fairseq.cli import average_checkpoints


@pytest.fixture(scope="module")
def update_checkpoints(toy_data, tmp_path_factory):
    """An NMT saved after 2, 4 and 6 updates."""
    data, _, _ = toy_data
    save = tmp_path_factory.mktemp("avg")
    run_fairseq("fairseq-train", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation",
        "--arch", "vtlm_translation_tiny", *TINY_DIMS, "--criterion", "label_smoothed_cross_entropy",
        "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "16", "--max-update", "6", "--cpu",
        "--save-interval-updates", "2", "--disable-validation", "--num-workers", "0", "--save-dir", save,
    ])  # fmt: skip
    return save


def average(argv):
    with pytest.raises(SystemExit) as e:
        average_checkpoints.cli_main([str(a) for a in argv])
    return e.value.code


def test_average_is_the_mean_and_translates(update_checkpoints, toy_data):
    save = update_checkpoints
    out = save / "average.pt"
    assert average(["--inputs", save, "--num-update-checkpoints", 2, "--output", out]) == 0
    models = [torch.load(save / f"checkpoint_1_{n}.pt")["model"] for n in (4, 6)]
    averaged = torch.load(out)["model"]
    assert set(averaged) == set(models[0])
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (models[0][name] + models[1][name]) / 2, rtol=0, atol=1e-6)
    assert not torch.equal(models[0]["encoder.embed_tokens.weight"], models[1]["encoder.embed_tokens.weight"])

    from vtlm_fairseq.hub import VTLMTranslator

    data, _, world = toy_data
    mt = VTLMTranslator.from_pretrained(str(save), checkpoint_file="average.pt", data=str(data), beam=2)
    sentence = (world / "raw" / "test.en").read_text().splitlines()[0]
    assert isinstance(mt.translate(sentence), str)


def test_explicit_inputs_and_an_upper_bound(update_checkpoints):
    save = update_checkpoints
    bounded = save / "bounded.pt"
    assert average(["--inputs", save, "--num-update-checkpoints", 2, "--checkpoint-upper-bound", 4,
                    "--output", bounded]) == 0  # fmt: skip
    explicit = save / "explicit.pt"
    assert average(["--inputs", save / "checkpoint_1_2.pt", save / "checkpoint_1_4.pt", "--output", explicit]) == 0
    a, b = torch.load(bounded)["model"], torch.load(explicit)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refusals_are_one_line(update_checkpoints, caplog):
    save = update_checkpoints
    cases = [
        (["--inputs", save, "--num-update-checkpoints", 9, "--output", save / "x.pt"], "3 update checkpoints"),
        (["--inputs", save, "--num-epoch-checkpoints", 1, "--output", save / "x.pt"], "0 epoch checkpoints"),
        (["--inputs", save / "checkpoint_1_2.pt", save / "checkpoint_1_2.pt", "--output", save / "x.pt"],
         "checkpoint_1_2.pt: given twice"),
        (["--inputs", save / "checkpoint_1_2.pt", "--output", save / "checkpoint_1_2.pt"], "also an input"),
        (["--inputs", save / "checkpoint_1_2.pt", "--output", save / "checkpoint_1_4.pt"], "exists already"),
        (["--inputs", save / "nothing.pt", "--output", save / "x.pt"], "nothing.pt: no such fairseq checkpoint"),
        (["--inputs", save / "checkpoint_1_2.pt", "--output", save, "--force"], "is a folder"),
    ]  # fmt: skip
    for argv, message in cases:
        caplog.clear()
        assert average(argv) == 2, argv
        assert message in caplog.text, (argv, caplog.text)
    assert not (save / "x.pt").exists()

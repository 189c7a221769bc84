import pytest

from tests.conftest import REPO, TINY_DIMS, run_fairseq


@pytest.fixture(scope="session")
def tlm_checkpoint(toy_data, tmp_path_factory):
    """A tiny text-only TLM trained for 2 updates on the tiny toy world."""
    data, _, _ = toy_data
    save = tmp_path_factory.mktemp("tlm_ckpt")
    run_fairseq("fairseq-train", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "translation_lm", "--arch", "vtlm_tiny", *TINY_DIMS,
        "--criterion", "vtlm_loss", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "16",
        "--max-update", "2", "--cpu", "--seed", "7", "--save-dir", save, "--disable-validation",
    ])  # fmt: skip
    return save / "checkpoint_last.pt"

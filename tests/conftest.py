import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VTLM_SHARED", REPO.parent / "shared"))


def shared_path(*parts) -> Path:
    """A path under ../shared; a test that needs it fails, naming what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"{path} is missing: these tests read the project's shared data, which must "
            f"sit beside the repository as ../shared (or set VTLM_SHARED)"
        )
    return path


TINY_WORLD = dict(
    train_pairs=240, valid_pairs=37, test_pairs=21, num_regions=12, feature_dim=16,
    captions_per_image=4, eval_captions_per_image=2,
)  # fmt: skip


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A tiny toy world, prepared as a data-bin: (data-bin, feature store, world)."""
    from vtlm_fairseq.text.preparation import PrepareConfig, prepare
    from vtlm_fairseq.toy_world import ToyWorldConfig, build_toy_world

    root = tmp_path_factory.mktemp("toy_data")
    build_toy_world(root / "world", ToyWorldConfig(**TINY_WORLD))
    prepare(
        PrepareConfig(
            raw_dir=str(root / "world" / "raw"),
            dest_dir=str(root / "bin"),
            image_splits_dir=str(root / "world" / "image_splits"),
            bpe_merges=300,
            workers=1,
        )
    )
    return root / "bin", root / "world" / "features.h5", root / "world"


def setup_fairseq(argv):
    """(cfg, task) exactly as fairseq-train builds them from a command line."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["--user-dir", str(REPO / "vtlm_fairseq")] + argv)
    cfg = convert_namespace_to_omegaconf(args)
    return cfg, tasks.setup_task(cfg.task)


TINY_DIMS = ["--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2"]


def fairseq_command(name: str) -> str:
    import sys

    return str(Path(sys.executable).parent / name)


def run_fairseq(name, args, input=None, cwd=None):
    """Runs a fairseq console command; fails the test with its output tail."""
    import subprocess

    proc = subprocess.run([fairseq_command(name)] + [str(a) for a in args], capture_output=True, text=True,
                          input=input, cwd=cwd)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def vtlm_checkpoint(toy_data, tmp_path_factory):
    """A tiny VTLM trained for 10 updates on the tiny toy world."""
    data, store, _ = toy_data
    save = tmp_path_factory.mktemp("vtlm_ckpt")
    run_fairseq("fairseq-train", [
        data, "--user-dir", REPO / "vtlm_fairseq", "--task", "visual_tlm", "--region-features", store,
        "--arch", "vtlm_tiny", *TINY_DIMS, "--criterion", "vtlm_loss", "--optimizer", "adam", "--lr", "1e-3",
        "--batch-size", "16", "--max-update", "10", "--cpu", "--seed", "7", "--save-dir", save,
        "--disable-validation",
    ])  # fmt: skip
    return save / "checkpoint_last.pt"


def finetune(toy_data, save, pretrained=None, features=True, updates=10):
    """MMT (or NMT without features) on the tiny toy world."""
    data, store, _ = toy_data
    args = [data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation",
            "--arch", "vtlm_translation_tiny", *TINY_DIMS, "--criterion", "label_smoothed_cross_entropy",
            "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "16", "--max-update", updates, "--cpu",
            "--save-dir", save, "--seed", "3"]  # fmt: skip
    if features:
        args += ["--region-features", store]
    if pretrained:
        args += ["--pretrained-checkpoint", pretrained]
    return run_fairseq("fairseq-train", args)


@pytest.fixture(scope="session")
def mmt_checkpoint(toy_data, vtlm_checkpoint, tmp_path_factory):
    """A tiny MMT fine-tuned from vtlm_checkpoint for 10 updates."""
    save = tmp_path_factory.mktemp("mmt")
    log = finetune(toy_data, save, pretrained=vtlm_checkpoint)
    assert "initialised from" in log and "| valid |" in log
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def nmt_checkpoint(toy_data, tmp_path_factory):
    """A tiny NMT trained from scratch for 10 updates."""
    save = tmp_path_factory.mktemp("nmt")
    finetune(toy_data, save, features=False)
    return save / "checkpoint_last.pt"


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server of good and bad images (tests/corpora/test_image_download.py)."""
    from tests.corpora.test_image_download import ImageServer

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = ImageServer()
    yield s
    s.close()

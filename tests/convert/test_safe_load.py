"""The reference-checkpoint reader never unpickles code: only tensors, numpy
arrays/dtypes/scalars and plain containers pass."""

import argparse
import os

import numpy as np
import pytest
import torch

from vtlm_fairseq.convert.safe_load import UnsafeCheckpointError, load_reference_checkpoint, pickle_globals


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def reference_like(tmp_path, **extra):
    state = {
        "model": {"embeddings.weight": torch.randn(5, 4)},
        "dico_id2word": {0: "<s>", 1: "</s>"},
        "params": {"mask_scores": np.arange(5), "lr": np.float64(1e-4), "langs": ["en", "de"]},
        **extra,
    }
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    return path


def test_reads_tensors_numpy_and_containers(tmp_path):
    ckpt = load_reference_checkpoint(reference_like(tmp_path))
    assert ckpt["params"]["mask_scores"].tolist() == [0, 1, 2, 3, 4]
    assert ckpt["model"]["embeddings.weight"].shape == (5, 4)


@pytest.mark.parametrize("payload", [Exploit(), argparse.Namespace(lr=1.0)], ids=["os.system", "Namespace"])
def test_refuses_any_other_global_naming_it(tmp_path, payload):
    """argparse.Namespace is refused too, although the plugin registers it as
    a safe global for fairseq's own checkpoints: reference files never hold it."""
    path = reference_like(tmp_path, evil=payload)
    with pytest.raises(UnsafeCheckpointError, match="refused to load.*(posix.system|argparse.Namespace)"):
        load_reference_checkpoint(path)


def test_legacy_format_is_scanned_too(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"evil": Exploit()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_reference_checkpoint(path)


def test_pickle_globals_sees_stack_global():
    import pickle

    data = pickle.dumps(argparse.Namespace(a=1), protocol=4)
    assert "argparse.Namespace" in pickle_globals(data)


def test_shared_reference_checkpoints_load(tmp_path):
    from tests.conftest import shared_path

    ckpt = load_reference_checkpoint(shared_path("fixtures", "reference_vtlm", "checkpoints", "vtlm_pretrained.pth"))
    assert isinstance(ckpt["params"]["mask_scores"], np.ndarray)

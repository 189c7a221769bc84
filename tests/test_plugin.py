import argparse

import torch

import vtlm_fairseq  # noqa: F401  (registers argparse.Namespace as a safe global)


def test_checkpoint_with_namespace_loads_weights_only(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    state = {"args": argparse.Namespace(lr=[1e-4], arch="x"), "model": {"w": torch.ones(2)}}
    torch.save(state, path)
    loaded = torch.load(path)  # torch >= 2.6: weights_only=True by default
    assert loaded["args"].arch == "x"
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_fairseq_checkpoint_loader_accepts_namespace(tmp_path):
    from fairseq import checkpoint_utils

    # the layout fairseq writes, with the arguments as a Namespace (as in
    # checkpoints of older fairseq versions and of many forks)
    path = tmp_path / "checkpoint_best.pt"
    state = {
        "args": None,
        "cfg": {"model": argparse.Namespace(arch="transformer", _name="transformer")},
        "model": {"w": torch.zeros(3)},
        "optimizer_history": [
            {
                "criterion_name": "CrossEntropyCriterion",
                "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": 1.5},
                "num_updates": 7,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 2, "iterations_in_epoch": 5}},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    loaded = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert loaded["cfg"]["model"].arch == "transformer"
    assert loaded["optimizer_history"][-1]["num_updates"] == 7


class Stranger:
    pass


def test_other_globals_stay_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Stranger()}, path)
    try:
        torch.load(path)
    except Exception as e:  # torch's UnpicklingError
        assert "weights_only" in str(e) or "Unsupported global" in str(e)
    else:
        raise AssertionError("an unknown class was unpickled")


def test_safe_reading_keeps_the_registered_globals(tmp_path):
    """Reading a checkpoint safely must not unregister argparse.Namespace
    (torch's safe_globals context removes its globals on exit)."""
    from vtlm_fairseq.checkpoints import FAIRSEQ_GLOBALS, read_torch_file

    path = tmp_path / "checkpoint.pt"
    torch.save({"args": argparse.Namespace(arch="x"), "model": {"w": torch.ones(1)}}, path)
    assert read_torch_file(path, FAIRSEQ_GLOBALS, "fairseq checkpoint")["args"].arch == "x"
    assert argparse.Namespace in torch.serialization.get_safe_globals()

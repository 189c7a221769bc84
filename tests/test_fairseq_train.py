"""fairseq-train with the plugin, end to end on the tiny toy world: TLM and
VTLM, resume after a kill, and fairseq's own distributed training (2 CPU
processes, gloo) against one process with the doubled batch."""

import json
import os
import signal
import socket
import subprocess

import pytest
import torch

from tests.conftest import REPO, fairseq_command, run_fairseq

FAIRSEQ_TRAIN = fairseq_command("fairseq-train")
TINY_MODEL = [
    "--arch", "vtlm_tiny", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--criterion", "vtlm_loss", "--optimizer", "adam",
    "--lr", "1e-3", "--log-interval", "1", "--log-format", "json", "--cpu", "--seed", "7",
]  # fmt: skip


def train_args(toy_data, task="visual_tlm"):
    data, store, _ = toy_data
    args = [str(data), "--user-dir", str(REPO / "vtlm_fairseq"), "--task", task] + TINY_MODEL
    if task == "visual_tlm":
        args += ["--region-features", str(store)]
    return args


def run(args):
    return run_fairseq("fairseq-train", args)


def records(log, kind="train_inner"):
    out = []
    for line in log.splitlines():
        if f"| {kind} |" in line:
            out.append(json.loads(line.split(f"| {kind} | ", 1)[1]))
    return out


@pytest.mark.parametrize("task", ["visual_tlm", "tlm"])
def test_trains_validates_and_saves(toy_data, tmp_path, task):
    log = run(train_args(toy_data, task) + ["--batch-size", "16", "--max-update", "20",
              "--save-dir", str(tmp_path), "--required-batch-size-multiple", "8"])  # fmt: skip
    train = records(log)
    assert len(train) == 20
    assert float(train[-1]["mlm_loss"]) < float(train[0]["mlm_loss"])
    assert ("mrc_acc" in train[0]) == (task == "visual_tlm")
    valid = records(log, "valid")
    assert valid and {"valid_mlm_loss", "valid_mlm_ppl", "valid_mlm_acc"} <= set(valid[-1])
    assert (tmp_path / "checkpoint_last.pt").exists()
    # fairseq's own loader reads our checkpoint under torch's weights-only default
    from fairseq import checkpoint_utils

    import vtlm_fairseq  # noqa: F401

    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 20


def test_resume_after_kill_continues_the_same_run(toy_data, tmp_path):
    """240 pairs / 16 = 15 batches per epoch: the kill lands mid-epoch 1 and
    the run continues into epoch 2 exactly as an uninterrupted one."""
    common = train_args(toy_data) + ["--batch-size", "16", "--max-update", "22",
                                     "--save-interval-updates", "10", "--disable-validation"]  # fmt: skip
    straight = records(run(common + ["--save-dir", str(tmp_path / "a")]))

    proc = subprocess.Popen(
        [FAIRSEQ_TRAIN] + common + ["--save-dir", str(tmp_path / "b")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if "Saved checkpoint" in line and "@ 10 updates" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed_log = run(common + ["--save-dir", str(tmp_path / "b")])
    assert "Loaded checkpoint" in resumed_log and "@ 10 updates" in resumed_log
    resumed = records(resumed_log)
    assert [r["num_updates"] for r in resumed] == [str(n) for n in range(11, 23)]
    for a, b in zip(straight[10:], resumed):
        assert a["num_updates"] == b["num_updates"] and a["epoch"] == b["epoch"]
        assert a["loss"] == b["loss"] and a["mlm_acc"] == b["mlm_acc"]
    final = [torch.load(tmp_path / d / "checkpoint_last.pt")["model"] for d in ("a", "b")]
    for key in final[0]:
        torch.testing.assert_close(final[0][key], final[1][key], rtol=0, atol=1e-6)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_match_one_process_with_the_doubled_batch(toy_data, tmp_path):
    """fairseq's torch.distributed training (gloo, 2 ranks, 8 pairs each) vs
    one process accumulating the same two batches of 8 (--update-freq 2).
    Masks are seeded per sentence pair, so both see the same inputs; without
    dropout the loss curves agree to float precision."""
    common = train_args(toy_data) + [
        "--batch-size", "8", "--max-update", "12", "--dropout", "0", "--attention-dropout", "0",
        "--region-dropout", "0", "--no-save", "--disable-validation",
    ]  # fmt: skip
    single = records(run(common + ["--update-freq", "2"]))
    dist = common + [
        "--distributed-world-size", "2", "--distributed-backend", "gloo", "--distributed-no-spawn",
        "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--ddp-backend", "legacy_ddp",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen(
        [FAIRSEQ_TRAIN] + dist + ["--distributed-rank", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    rank0 = subprocess.run(
        [FAIRSEQ_TRAIN] + dist + ["--distributed-rank", "0"], capture_output=True, text=True, env=env, timeout=300
    )
    _, err1 = other.communicate(timeout=60)
    assert rank0.returncode == 0 and other.returncode == 0, rank0.stderr[-2000:] + err1[-2000:]
    log = rank0.stdout + rank0.stderr
    assert "distributed init (rank 0)" in log and "as rank 0" in log
    multi = records(log)
    assert len(single) == len(multi) == 12
    for a, b in zip(single, multi):
        assert a["bsz"] == b["bsz"] == "16"
        assert abs(float(a["loss"]) - float(b["loss"])) < 2e-3, (a, b)
        assert abs(float(a["mlm_acc"]) - float(b["mlm_acc"])) < 1e-6
    assert float(multi[-1]["loss"]) < float(multi[0]["loss"])

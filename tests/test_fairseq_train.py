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
              "--save-dir", str(tmp_path), "--required-batch-size-multiple", "8",
              "--tensorboard-logdir", str(tmp_path / "tb")])  # fmt: skip
    # tensorboard logging works out of the box: event files with our metrics
    assert "Please install tensorboardX" not in log
    for split in ("train_inner", "train", "valid"):
        events = b"".join(p.read_bytes() for p in (tmp_path / "tb" / split).glob("events.out.tfevents.*"))
        assert b"mlm_loss" in events
        if split != "valid":  # validation masks no regions by default
            assert (b"mrc_loss" in events) == (task == "visual_tlm")
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


FAULTS = REPO / "tests" / "fairseq_faults.py"


def fault_run(args, fault="none"):
    """fairseq-train with a fault (tests/fairseq_faults.py); unbuffered, so
    that a killed run has logged every update it made."""
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(FAULTS), fault] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def saved_updates(save_dir):
    path = save_dir / "checkpoint_last.pt"
    return torch.load(path)["optimizer_history"][-1]["num_updates"] if path.exists() else 0


def test_sigkill_at_random_moments_and_during_checkpoint_writes(toy_data, tmp_path):
    """One run of 90 updates (a checkpoint every 3) is SIGKILLed 12 times:
    at seeded random moments of training, and while a checkpoint is written
    (half way through the write, after the rename, half way through the copy
    to checkpoint_last.pt). Each rerun resumes; every update's loss, whichever
    run logged it, equals the uninterrupted run's, and so do the weights."""
    import random

    max_update = 90
    common = train_args(toy_data) + ["--batch-size", "16", "--max-update", max_update,
                                     "--save-interval-updates", "3", "--disable-validation", "--num-workers", "0"]  # fmt: skip
    straight = {r["num_updates"]: r for r in records(run(common + ["--save-dir", tmp_path / "a"]))}
    rng = random.Random(2021)
    save_dir = tmp_path / "b"
    logged, kills, faults = [], 0, ["kill-in-save", "kill-after-save", "kill-in-copy"]
    for k in range(12):
        fault = f"{faults[k % 3]}:{rng.randint(1, 2)}" if k % 2 else "none"
        proc = fault_run(common + ["--save-dir", save_dir], fault)
        lines, wait_for = [], rng.randint(0, 3)  # new updates before a random kill
        for line in proc.stdout:
            lines.append(line)
            if fault == "none" and "| train_inner |" in line:
                wait_for -= 1
                if wait_for < 0:
                    time_to_kill = rng.uniform(0, 0.3)
                    try:
                        proc.wait(timeout=time_to_kill)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    break
        lines += proc.stdout.readlines()
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        assert proc.returncode in (0, -signal.SIGKILL), "".join(lines[-30:])
        logged += [dict(r, run=k, fault=fault) for r in records("".join(lines))]
        if proc.returncode == 0 or saved_updates(save_dir) == max_update:
            # done; (fairseq-train rerun on a finished run would make one update more)
            break
    assert kills >= 10, f"only {kills} runs were killed"
    if saved_updates(save_dir) != max_update:  # the last run was killed before the end: one more
        logged += [dict(r, run="final") for r in records(run(common + ["--save-dir", save_dir]))]
    assert {r["num_updates"] for r in logged} == set(straight)
    for record in logged:  # every logged update, the redone ones too
        want = straight[record["num_updates"]]
        got = (record["loss"], record["mlm_acc"], record["epoch"])
        assert got == (want["loss"], want["mlm_acc"], want["epoch"]), (record["run"], record.get("fault"), record)
    weights = [torch.load(tmp_path / d / "checkpoint_last.pt")["model"] for d in ("a", "b")]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


@pytest.mark.parametrize("fault", ["enospc-in-save:2", "enospc-in-copy:2"])
def test_full_disk_keeps_the_last_good_checkpoint(toy_data, tmp_path, fault):
    """The second save fails with a full disk: fairseq-train stops, no
    temporary file is left, checkpoint_last.pt is the first save's."""
    args = train_args(toy_data) + ["--batch-size", "16", "--max-update", "9", "--save-interval-updates", "3",
                                   "--disable-validation", "--num-workers", "0", "--save-dir", tmp_path]  # fmt: skip
    proc = fault_run(args, fault)
    out = proc.communicate()[0]
    assert proc.returncode != 0 and "No space left on device" in out
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    from vtlm_fairseq.checkpoints import read_fairseq_checkpoint

    state = read_fairseq_checkpoint(tmp_path / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 3


@pytest.mark.parametrize(
    "option, value, message",
    [("--region-features", "none.h5", "none.h5: no such feature store"),
     ("--train-subset", "nosuch", "split 'nosuch' not found")],
    ids=["missing-store", "missing-split"],
)  # fmt: skip
def test_bad_input_inside_fairseq_train_is_one_line_and_status_2(toy_data, tmp_path, option, value, message):
    """Our errors raised inside fairseq-train reach the user as one line."""
    args = train_args(toy_data) + ["--batch-size", "16", "--max-update", "1", "--save-dir", str(tmp_path)]
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    proc = subprocess.run([FAIRSEQ_TRAIN] + args, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "| ERROR |" in line]
    assert len(errors) == 1 and message in errors[0]

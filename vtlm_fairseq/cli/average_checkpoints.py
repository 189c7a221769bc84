"""vtlm-average-checkpoints: the mean of the weights of several checkpoints,
as fairseq's scripts/average_checkpoints.py computes it (that script is not
in the installed fairseq package). Multi30k systems are usually reported on
the average of their last checkpoints."""

import argparse
import logging
import os
from collections import OrderedDict
from typing import Dict, List

import torch

from ..checkpoints import FAIRSEQ_GLOBALS, CheckpointError, read_torch_file
from .command import run_command

logger = logging.getLogger("vtlm_fairseq.average_checkpoints")

# fairseq's checkpoint names: checkpoint{epoch}.pt and checkpoint_{epoch}_{updates}.pt
EPOCH_PATTERN = r"checkpoint(\d+)\.pt"
UPDATE_PATTERN = r"checkpoint_\d+_(\d+)\.pt"


def last_checkpoints(directory: str, count: int, by_updates: bool, upper_bound=None) -> List[str]:
    """The ``count`` newest epoch (or update) checkpoints of a save dir, at
    most ``upper_bound`` (epoch or update number)."""
    from fairseq.checkpoint_utils import checkpoint_paths

    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    pattern = UPDATE_PATTERN if by_updates else EPOCH_PATTERN
    paths = checkpoint_paths(directory, pattern=pattern)  # newest first
    if upper_bound is not None:
        import re

        paths = [p for p in paths if int(re.fullmatch(pattern, os.path.basename(p)).group(1)) <= upper_bound]
    kind = "update" if by_updates else "epoch"
    if len(paths) < count:
        raise CheckpointError(
            f"{directory}: {len(paths)} {kind} checkpoints ({pattern}"
            + (f", at most {upper_bound}" if upper_bound is not None else "")
            + f"), {count} asked for"
        )
    return paths[:count]


def average_checkpoints(paths: List[str]) -> Dict:
    """The last checkpoint's state with its model replaced by the mean of
    all models (floating-point tensors averaged in float64, integer ones by
    integer division, as fairseq's script)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    sums: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    state = None
    for path in paths:
        state = read_torch_file(path, FAIRSEQ_GLOBALS, "fairseq checkpoint")
        model = state.get("model") if isinstance(state, dict) else None
        if not isinstance(model, dict):
            raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
        if sums and list(model) != list(sums):
            missing = sorted(set(sums) ^ set(model))[:3]
            raise CheckpointError(f"{path}: its parameters differ from {paths[0]}'s (e.g. {', '.join(missing)})")
        for name, tensor in model.items():
            if name in sums and tensor.shape != sums[name].shape:
                raise CheckpointError(
                    f"{path}: '{name}' has shape {tuple(tensor.shape)}, {paths[0]} {tuple(sums[name].shape)}"
                )
            value = tensor.double() if tensor.is_floating_point() else tensor.clone()
            sums[name] = sums[name] + value if name in sums else value
    n = len(paths)
    averaged = OrderedDict()
    for name, total in sums.items():
        like = state["model"][name]
        averaged[name] = (total / n).to(like.dtype) if like.is_floating_point() else total // n
    state["model"] = averaged
    return state


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-average-checkpoints",
        description="Average the weights of fairseq checkpoints (given, or the last N of a save dir) into one "
        "checkpoint that fairseq-generate, the probes and the Python API load like any other.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--inputs", nargs="+", required=True,
                   help="checkpoint files, or one save dir with --num-epoch-checkpoints / --num-update-checkpoints")
    p.add_argument("--output", required=True, help="the averaged checkpoint to write (written atomically)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int, default=None,
                       help="average the last N checkpoint{EPOCH}.pt of the save dir")
    group.add_argument("--num-update-checkpoints", type=int, default=None,
                       help="average the last N checkpoint_{EPOCH}_{UPDATES}.pt of the save dir")
    p.add_argument("--checkpoint-upper-bound", type=int, default=None,
                   help="with --num-*-checkpoints: only checkpoints up to this epoch or update number")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    return p  # fmt: skip


def run(args) -> int:
    from fairseq.checkpoint_utils import torch_persistent_save

    count = args.num_epoch_checkpoints or args.num_update_checkpoints
    if count is not None:
        if len(args.inputs) != 1:
            raise CheckpointError("--num-*-checkpoints takes one save dir as --inputs")
        if count < 1:
            raise CheckpointError(f"--num-*-checkpoints must be at least 1, not {count}")
        paths = last_checkpoints(args.inputs[0], count, args.num_update_checkpoints is not None,
                                 args.checkpoint_upper_bound)  # fmt: skip
    else:
        paths = list(args.inputs)
    seen = set()
    for path in paths:
        if os.path.abspath(path) in seen:
            raise CheckpointError(f"{path}: given twice")
        seen.add(os.path.abspath(path))
    if os.path.abspath(args.output) in map(os.path.abspath, paths):
        raise CheckpointError(f"{args.output}: the output is also an input")
    if os.path.isdir(args.output):
        raise CheckpointError(f"{args.output}: is a folder; give the averaged checkpoint's file name")
    if os.path.exists(args.output) and not args.force:
        raise CheckpointError(f"{args.output}: exists already; use --force to replace it")
    logger.info("averaging %d checkpoints: %s", len(paths), ", ".join(paths))
    state = average_checkpoints(paths)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch_persistent_save(state, args.output)  # .tmp then rename: never half a file
    logger.info("wrote %s", args.output)
    return 0


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()

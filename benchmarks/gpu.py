"""GPU training speed and memory (issue area 7): VTLM pre-training and MMT
fine-tuning steps at ``vtlm_base`` size in fp32 (the baseline), fp16 and
bf16, on the toy world (36 regions of 1536 dims, batches of 64 pairs);
sentences/s from interleaved rounds (wall clock, the GPU synchronised at
the end of each block) and peak GPU memory of each configuration (its own
allocations: the other configurations' weights are left out).

fairseq main turns ``--bf16`` into ``--tpu`` (fairseq/options.py), which
cannot run on a GPU; this benchmark parses ``--bf16`` as fairseq-train
does and then clears ``tpu``, the one change bf16 needs on CUDA.

``--dry-run`` runs the same code at tiny size on the CPU in a minute or two
(fp16 there needs ``--fp16-no-flatten-grads``: fairseq flattens fp16 master
weights on CUDA only). ``benchmarks/gpu.sh`` bounds a GPU run with
``timeout``; each row is saved to the JSON as soon as it is measured.

    bash benchmarks/gpu.sh --json gpu.json           # on a CUDA machine
    python benchmarks/gpu.py --dry-run               # anywhere
"""

import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

from benchmarks.benchlib import (  # noqa: E402
    Report,
    Row,
    TrainingLoop,
    base_parser,
    interleaved,
    quiet_logging,
    timed_row,
    toy_data,
)

PRECISIONS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}


def stage_args(stage: str, store: Path, size: str) -> List:
    if stage == "VTLM pre-training":
        return ["--task", "visual_tlm", "--region-features", store, "--arch", f"vtlm_{size}",
                "--criterion", "vtlm_loss", "--lr", "1e-4"]  # fmt: skip
    return ["--task", "multimodal_translation", "--region-features", store, "--arch", f"vtlm_translation_{size}",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--lr", "1e-5"]  # fmt: skip


STAGES = ("VTLM pre-training", "MMT fine-tuning")


def bf16_on_cuda(cfg) -> None:
    """fairseq main sets ``tpu`` with ``--bf16``; the Trainer then looks
    for an XLA device. On CUDA (and the CPU) bf16 needs only ``tpu`` off."""
    cfg.common.tpu = False


class Device:
    """CUDA, or the CPU in a dry run: synchronisation and memory figures."""

    def __init__(self, dry_run: bool):
        import torch

        self.torch = torch
        self.cuda = not dry_run
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU machine, or with --dry-run")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated_mb(self) -> float:
        return self.torch.cuda.memory_allocated() / 2**20 if self.cuda else 0.0

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float:
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.cuda else 0.0

    @property
    def name(self) -> str:
        return self.torch.cuda.get_device_name() if self.cuda else "cpu (dry run)"


def synced_block(loop: TrainingLoop, steps: int, device: Device) -> Callable[[], float]:
    def block() -> float:
        done = loop.steps(steps)
        device.sync()
        return done

    return block


def check_training(stage: str, precision: str, loop: TrainingLoop) -> str:
    """Stops the benchmark unless the run made updates with a finite loss
    (a precision that only skips overflowing steps is not fast, it is broken)."""
    import math

    updates = loop.trainer.get_num_updates()
    loss = float(loop.last_log["loss"]) if loop.last_log is not None else math.nan
    if updates == 0 or not math.isfinite(loss):
        raise SystemExit(f"{stage} {precision}: {updates} updates, last loss {loss}: training is broken")
    return f"{updates} updates, loss {loss:.2f}"


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=5)
    parser.add_argument("--dry-run", action="store_true", help="tiny size on the CPU, same code path")
    parser.add_argument("--steps", type=int, default=10, help="updates per timed block")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed updates right after building")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4, help="data loader processes (dry run: 0)")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup_steps, args.repeats, args.num_workers = 2, 1, min(args.repeats, 2), 0
    device = Device(args.dry_run)
    size = "tiny" if args.dry_run else "base"
    quiet_logging()
    data = toy_data(args.work / "toy")
    common = ["--optimizer", "adam", "--clip-norm", "5", "--batch-size", str(args.batch_size),
              "--num-workers", str(args.num_workers), "--seed", "1", "--disable-validation", "--no-save"]  # fmt: skip
    if args.dry_run:
        common += ["--cpu", "--fp16-no-flatten-grads"]
    report = Report(f"GPU training ({device.name}, {size})", args)
    for stage in STAGES:
        loops: Dict[str, TrainingLoop] = {}
        memory: Dict[str, float] = {}
        for precision in args.precisions:
            before = device.allocated_mb()
            device.reset_peak()
            loops[precision] = TrainingLoop(
                [data.data_bin, *stage_args(stage, data.store, size), *common, *PRECISIONS[precision]],
                units="nsentences", configure=bf16_on_cuda if precision == "bf16" else None,
            )  # fmt: skip
            loops[precision].steps(args.warmup_steps)
            device.sync()
            memory[precision] = device.peak_mb() - before
            print(f"{stage} {precision}: built, {args.warmup_steps} warm-up updates, "
                  f"peak {memory[precision]:.0f} MB", flush=True)  # fmt: skip
        blocks = {p: synced_block(loop, args.steps, device) for p, loop in loops.items()}
        samples = interleaved(blocks, args.repeats, warmup=0)
        health = {p: check_training(stage, p, loop) for p, loop in loops.items()}
        baseline = args.precisions[0]
        for precision in args.precisions[1:]:
            report.add(timed_row(f"7 {stage}", "sentences/s", samples, precision, baseline, clock="wall",
                                 note=f"{health[precision]}; {baseline}: {health[baseline]}"))  # fmt: skip
            if device.cuda:
                report.add(Row(f"7 {stage}", "peak GPU MB", precision, baseline, memory[precision],
                               memory[baseline], memory[precision] / memory[baseline]))  # fmt: skip
        del loops, blocks  # the next stage's memory figures start from a clean slate
    report.finish()


if __name__ == "__main__":
    main()

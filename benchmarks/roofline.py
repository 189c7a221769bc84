"""Training steps against their own compute: the roofline of each
configuration (issue 13).

For each configuration the full training step (fairseq's Trainer as
fairseq-train runs it: data loading in this process, forward, loss,
backward, clipping, Adam, logging) is timed next to the **kernels alone**:
the matrix multiplications and attention kernels that step ran (``mm``,
``addmm``, ``bmm``, ``baddbmm``, softmax, fused attention), recorded with
their shapes from the real model's forward on the very batches the step
just trained on, then replayed on fresh contiguous tensors of those shapes,
forward and backward (gradients only for the operands that had them). That
is the compute the step cannot avoid; the rest of the step (embeddings,
LayerNorm, dropout, masks, copies, loss, optimizer, data, fairseq's loop)
is the **outside share**, ``1 - kernels / step``, the ratio to drive down.

The rows are ratios kernels-time / step-time (the median of the per-round
ratios, the two run in interleaved rounds on process CPU time); the note
gives the milliseconds per step, the outside share and how many kernel
operands the model handed over non-contiguous (transposed views and the
like). A ``workers`` row compares ``--num-workers 1`` with 0 on the CPU
time of the whole process tree (the worker's included).

    python benchmarks/roofline.py --json work_dirs/bench/roofline.json
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

from benchmarks.benchlib import (  # noqa: E402
    Report,
    Row,
    Sample,
    TrainingLoop,
    base_parser,
    interleaved,
    quiet_logging,
    set_threads,
    timed_row,
    toy_data,
)

# the command (OMP_NUM_THREADS=1, batch 64, Adam, 15% word and region masking)
COMMON = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.999)", "--lr", "1e-4", "--lr-scheduler", "fixed",
          "--clip-norm", "5", "--batch-size", "64", "--dropout", "0.1", "--attention-dropout", "0.1", "--cpu",
          "--disable-validation", "--no-save", "--seed", "1"]  # fmt: skip


def configurations(data) -> Dict[str, List[str]]:
    vtlm = [data.data_bin, "--task", "visual_tlm", "--region-features", data.store, "--region-mask-prob", "0.15",
            "--mask-prob", "0.15", "--criterion", "vtlm_loss"]  # fmt: skip
    configs = {
        "VTLM vtlm_tiny": vtlm + ["--arch", "vtlm_tiny"],
        "TLM vtlm_tiny": [data.data_bin, "--task", "tlm", "--mask-prob", "0.15", "--criterion", "vtlm_loss",
                          "--arch", "vtlm_tiny"],  # fmt: skip
        "VTLM vtlm_base": vtlm + ["--arch", "vtlm_base"],
        "MMT tiny (fine-tuning)": [data.data_bin, "--task", "multimodal_translation", "--region-features",
                                   data.store, "--source-lang", "en", "--target-lang", "de",
                                   "--arch", "vtlm_translation_tiny", "--criterion",
                                   "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],  # fmt: skip
    }
    return {name: argv + COMMON for name, argv in configs.items()}


BATCH = int(COMMON[COMMON.index("--batch-size") + 1])

# updates per timed block: a base step takes some 20 tiny ones
STEPS = {"VTLM vtlm_base": 1}

# target outside share (issue 13): at most 25% at tiny, 10% at base
TARGETS = {"VTLM vtlm_tiny": ">= 0.75", "VTLM vtlm_base": ">= 0.9"}

# the aten operators that are matrix multiplications or attention: what
# a fused, layout-perfect implementation of the same model would still run
KERNELS = ("mm", "addmm", "bmm", "baddbmm", "_softmax", "_safe_softmax",
           "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math")  # fmt: skip


@dataclass
class Kernel:
    """One recorded call: the operator, its arguments with every tensor
    replaced by its (shape, dtype, requires_grad, contiguous, values)."""

    op: Callable
    args: tuple
    kwargs: dict

    @property
    def non_contiguous(self) -> int:
        return sum(1 for a in _tensors(self.args) if not a.is_contiguous())


def _tensors(args):
    import torch

    for a in args:
        if torch.is_tensor(a):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _tensors(a)


def record_kernels(model, criterion, sample) -> List[Kernel]:
    """The KERNELS calls of one forward (model + loss, training mode) on
    ``sample``, with their operands as the model handed them over."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: List[Kernel] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in KERNELS:
                calls.append(Kernel(func, tuple(args), dict(kwargs)))
            return func(*args, **kwargs)

    model.train()
    with Recorder():
        loss, _, _ = criterion(model, sample)
    del loss
    torch.set_grad_enabled(True)
    return calls


class KernelReplay:
    """The recorded kernels on fresh contiguous copies of their operands,
    forward then backward (gradients for the operands that had one)."""

    def __init__(self, kernels: List[Kernel]):
        import torch

        self.calls = []
        for k in kernels:
            def fresh(a):
                if torch.is_tensor(a):
                    copy = a.detach().clone(memory_format=torch.contiguous_format)
                    return copy.requires_grad_(a.requires_grad and a.is_floating_point())
                if isinstance(a, (list, tuple)):
                    return type(a)(fresh(x) for x in a)
                return a

            args = tuple(fresh(a) for a in k.args)
            kwargs = {key: fresh(v) for key, v in k.kwargs.items()}
            self.calls.append((k.op, args, kwargs, [a for a in _tensors(args) if a.requires_grad]))

    def run(self) -> None:
        import torch

        for op, args, kwargs, leaves in self.calls:
            out = op(*args, **kwargs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if leaves and out.requires_grad:
                torch.autograd.grad(out, leaves, torch.ones_like(out))


class Roofline:
    """A training loop and the replay of the kernels of the batches its
    last block trained on (recorded, untimed, before each kernel block)."""

    def __init__(self, argv: List[str], steps: int, configure=None):
        self.trained: List[dict] = []
        self.loop = TrainingLoop(argv, observe=self.trained.append, units="nsentences", configure=configure)
        self.steps = steps
        self.replay: List[KernelReplay] = []
        self.non_contiguous = self.operands = 0

    def train(self) -> float:
        self.trained.clear()
        self.loop.steps(self.steps)
        return float(self.steps)

    def prepare_kernels(self) -> None:
        import torch

        if not self.trained:  # the first block of all: record from new batches
            self.train()
        self.replay = []
        for sample in self.trained:
            calls = record_kernels(self.loop.model, self.loop.criterion, sample)
            self.non_contiguous += sum(k.non_contiguous for k in calls)
            self.operands += sum(len(list(_tensors(k.args))) for k in calls)
            self.replay.append(KernelReplay(calls))
        self.loop.model.zero_grad(set_to_none=True)
        torch.set_grad_enabled(True)

    def kernels(self) -> float:
        for replay in self.replay:
            replay.run()
        return float(len(self.replay))

    @property
    def kernel_count(self) -> int:
        return len(self.replay[0].calls) if self.replay else 0


STEP, KERNELS_ALONE = "train step", "kernels alone"


def roofline_row(name: str, argv: List[str], args) -> Row:
    roofline = Roofline(argv + ["--num-workers", "0"], args.steps or STEPS.get(name, 3))
    blocks = {STEP: roofline.train, KERNELS_ALONE: roofline.kernels}
    samples = interleaved(blocks, args.repeats, args.warmup,
                          before=lambda block: roofline.prepare_kernels() if block == KERNELS_ALONE else None)  # fmt: skip
    row = timed_row("roofline", "steps/s", samples, STEP, KERNELS_ALONE, TARGETS.get(name))
    row.variant = f"{name}: {STEP}"
    step_ms, kernel_ms = 1000 / row.value, 1000 / row.baseline_value
    row.note = (f"step {step_ms:.0f} ms, kernels {kernel_ms:.0f} ms ({roofline.kernel_count} calls), "
                f"outside {1 - row.ratio:.0%}; non-contiguous operands "
                f"{roofline.non_contiguous}/{roofline.operands}")  # fmt: skip
    return row


def workers_row(argv: List[str], args) -> Row:
    loops = {f"--num-workers {n}": TrainingLoop(argv + ["--num-workers", str(n)], units="nsentences")
             for n in (1, 0)}  # fmt: skip
    steps = args.steps or 3
    samples: Dict[str, List[Sample]] = interleaved({k: loop.block(steps) for k, loop in loops.items()},
                                                   args.repeats, args.warmup)  # fmt: skip
    return timed_row("workers (VTLM vtlm_tiny)", "pairs/s", samples, "--num-workers 1", "--num-workers 0", ">= 1.0",
                     clock="tree", note="CPU of the process tree: the worker's included")  # fmt: skip


def dropout_row(name: str, argv: List[str], args) -> Row:
    """The same step with --cpu-dropout fast (the default) and torch (torch's
    dropout and fairseq's attention path, as before issue 13's dropout change)."""
    loops = {f"--cpu-dropout {mode}": TrainingLoop(argv + ["--num-workers", "0", "--cpu-dropout", mode],
                                                   units="nsentences")
             for mode in ("fast", "torch")}  # fmt: skip
    steps = args.steps or STEPS.get(name, 3)
    samples = interleaved({k: loop.block(steps) for k, loop in loops.items()}, args.repeats, args.warmup)
    row = timed_row("cpu dropout", "pairs/s", samples, "--cpu-dropout fast", "--cpu-dropout torch", None)
    row.variant = f"{name}: --cpu-dropout fast"
    fast_ms, torch_ms = (BATCH * 1000 / v for v in (row.value, row.baseline_value))
    row.note = f"step {fast_ms:.0f} ms vs {torch_ms:.0f} ms"
    return row


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=5)
    parser.add_argument("--steps", type=int, help="updates per timed block (default: 3, 1 at vtlm_base)")
    parser.add_argument("--configs", nargs="+", help="configurations (default: all; names as in the table)")
    parser.add_argument("--no-workers", action="store_true", help="leave out the --num-workers 1 vs 0 row")
    parser.add_argument("--no-dropout", action="store_true",
                        help="leave out the rows comparing each configuration with --cpu-dropout torch")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quiet_logging()
    data = toy_data(args.work / "toy10k", train_pairs=10000)
    report = Report("roofline", args)
    configs = configurations(data)
    for name in args.configs or list(configs):
        if name not in configs:
            parser.error(f"--configs {name}: one of {', '.join(configs)}")
        report.add(roofline_row(name, configs[name], args))
        if not args.no_dropout:
            report.add(dropout_row(name, configs[name], args))
    if not args.no_workers:
        report.add(workers_row(configs["VTLM vtlm_tiny"], args))
    report.finish()


if __name__ == "__main__":
    main()

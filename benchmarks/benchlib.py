"""Shared machinery of the benchmarks: interleaved timing with medians,
comparison rows against a baseline, tables and JSON, toy data, fairseq
training loops built as fairseq-train builds them, and peak-RSS
measurement of child processes.

The machines these run on are shared and noisy, so no benchmark reports a bare
speed: every figure is a ratio against a baseline measured in the same
process, with the variants run in interleaved rounds (A B, B A, A B, ...) and
the ratio taken as the median of the per-round ratios, which cancels load
that comes and goes slower than a round.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "work_dirs" / "bench"
USER_DIR = str(REPO / "vtlm_fairseq")


# -- timing -------------------------------------------------------------------


CLOCKS = ("cpu", "wall")  # "tree" (with child processes) is a third, paired with "cpu"


@dataclass
class Sample:
    """One timed block of one variant: wall and process CPU seconds, and the
    work it did (words, tokens, sentences, images: what the benchmark counts).
    CPU time leaves out the time other jobs held the cores, so it is the
    steadier clock for compute; wall time is the one for I/O waits."""

    wall: float
    cpu: float
    units: float
    tree: Optional[float] = None  # CPU of this process and its children (DataLoader workers)

    def rate(self, clock: str) -> float:
        return self.units / getattr(self, clock)


def tree_cpu_time() -> float:
    """CPU seconds of this process, its finished children and its live ones
    (read from /proc): what a run with DataLoader workers costs in all."""
    import multiprocessing

    times = os.times()
    total = time.process_time() + times.children_user + times.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited in between: counted among the finished ones
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


Block = Callable[[], float]  # does one block of work, returns its units


def interleaved(blocks: Dict[str, Block], repeats: int, warmup: int = 1,
                before: Optional[Callable[[str], None]] = None) -> Dict[str, List[Sample]]:  # fmt: skip
    """Runs each variant's block once per round, ``warmup`` untimed rounds then
    ``repeats`` timed ones. The order inside a round rotates so that no
    variant always runs right after the same neighbour (caches, turbo).
    ``before(name)``, untimed, prepares a variant's block (e.g. evicts files
    from the page cache)."""
    samples: Dict[str, List[Sample]] = {name: [] for name in blocks}
    for name, timed in rotated_rounds(list(blocks), repeats, warmup):
        if before is not None:
            before(name)
        wall, cpu, tree = time.perf_counter(), time.process_time(), tree_cpu_time()
        units = blocks[name]()
        sample = Sample(time.perf_counter() - wall, time.process_time() - cpu, units, tree_cpu_time() - tree)
        if timed:
            samples[name].append(sample)
    return samples


def rotated_rounds(names: Sequence[str], repeats: int, warmup: int):
    """(name, timed) in the order ``interleaved`` runs variants: ``warmup``
    untimed rounds, then ``repeats`` timed ones, each round rotated by one."""
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in list(names[shift:]) + list(names[:shift]):
            yield name, round_index >= warmup


def median_rate(samples: Sequence[Sample], clock: str) -> float:
    return statistics.median(s.rate(clock) for s in samples)


def round_ratios(variant: Sequence[Sample], baseline: Sequence[Sample], clock: str) -> List[float]:
    """Variant rate / baseline rate, round by round (same round: same load)."""
    return [v.rate(clock) / b.rate(clock) for v, b in zip(variant, baseline)]


# -- results ------------------------------------------------------------------


@dataclass
class Row:
    """One comparison: a variant against its baseline on one measure.
    ``ratio`` is variant / baseline (for rates: higher is better for the
    variant; for sizes and memory: lower is smaller)."""

    benchmark: str
    measure: str
    variant: str
    baseline: str
    value: float
    baseline_value: float
    ratio: float
    target: Optional[str] = None  # ">= 0.95", "<= 0.55", ...
    repeats: int = 1
    ratio_min: Optional[float] = None
    ratio_max: Optional[float] = None
    clock: Optional[str] = None  # timed rows: the clock of value and ratio
    other_clock_ratio: Optional[float] = None  # the paired ratio on the other clock
    note: str = ""
    met: Optional[bool] = None
    per_round: List[float] = field(default_factory=list)  # the ratios of every round (JSON only)

    def __post_init__(self):
        if self.target is not None and self.met is None:
            op, bound = self.target.split()
            self.met = self.ratio >= float(bound) if op == ">=" else self.ratio <= float(bound)


def timed_row(benchmark: str, measure: str, samples: Dict[str, List[Sample]], variant: str, baseline: str,
              target: Optional[str] = None, note: str = "", clock: str = "cpu") -> Row:  # fmt: skip
    """The row of an interleaved comparison: median rates and the median of
    the per-round ratios on ``clock``, and that ratio on the other clock."""
    ratios = round_ratios(samples[variant], samples[baseline], clock)
    other = next(c for c in CLOCKS if c != clock)
    return Row(
        benchmark, f"{measure} ({clock})", variant, baseline,
        value=median_rate(samples[variant], clock), baseline_value=median_rate(samples[baseline], clock),
        ratio=statistics.median(ratios), target=target, repeats=len(ratios),
        ratio_min=min(ratios), ratio_max=max(ratios), clock=clock,
        other_clock_ratio=statistics.median(round_ratios(samples[variant], samples[baseline], other)), note=note,
        per_round=[round(r, 4) for r in ratios],
    )  # fmt: skip


class Report:
    """Rows of one benchmark script, printed as a table and saved as JSON with
    the conditions they were measured under."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.args = args
        self.rows: List[Row] = []
        self.extra: Dict[str, object] = {}
        self.started = time.time()
        self.load_before = os.getloadavg()

    def add(self, row: Row) -> Row:
        """Prints the row, and saves the JSON so far (a run cut short by a
        time limit keeps what it measured)."""
        self.rows.append(row)
        print(format_rows([row], header=False), flush=True)
        self.save()
        return row

    def environment(self) -> Dict[str, object]:
        import torch

        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_before": self.load_before,
            "load_average_after": os.getloadavg(),
            "git_head": _git_head(),
            "seconds": round(time.time() - self.started, 1),
        }

    def save(self) -> None:
        if not self.args.json:
            return
        payload = {
            "benchmark": self.name,
            "arguments": {k: str(v) for k, v in vars(self.args).items()},
            "environment": self.environment(),
            "rows": [asdict(r) for r in self.rows],
            **self.extra,
        }
        Path(self.args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(self.args.json).write_text(json.dumps(payload, indent=2) + "\n")

    def finish(self) -> None:
        print(f"\n== {self.name} ==")
        print(format_rows(self.rows))
        missed = [r for r in self.rows if r.met is False]
        print(f"targets: {sum(r.met is True for r in self.rows)} met, {len(missed)} missed")
        self.save()
        if self.args.json:
            print(f"saved {self.args.json}")


def _git_head() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return "unknown"


def _figure(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


COLUMNS = ("benchmark", "measure", "variant", "baseline", "value", "baseline_value", "ratio", "spread",
           "other clock", "target", "met", "n", "note")  # fmt: skip


def format_rows(rows: Sequence[Row], header: bool = True) -> str:
    """Aligned plain-text table (also reads as Markdown-ish in a terminal)."""
    table = [list(COLUMNS)] if header else []
    for r in rows:
        spread_text = f"{r.ratio_min:.2f}-{r.ratio_max:.2f}" if r.ratio_min is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        table.append([r.benchmark, r.measure, r.variant, r.baseline, _figure(r.value), _figure(r.baseline_value),
                      f"{r.ratio:.3f}", spread_text, _figure(r.other_clock_ratio), r.target or "-", met,
                      str(r.repeats), r.note])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def base_parser(description: str, repeats: int = 7) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where data is built and cached")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (medians over them)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared 2-core machine times more steadily)")  # fmt: skip
    parser.add_argument("--json", help="save the table and its conditions here")
    return parser


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# -- data ---------------------------------------------------------------------


@dataclass
class ToyData:
    data_bin: Path
    store: Path
    world: Path


def toy_data(root: Path, bpe_merges: int = 2000, **world_options) -> ToyData:
    """A toy world prepared as a data-bin, built with the plugin's own tools
    the first time and reused after (``root/ready`` marks a finished build)."""
    data = ToyData(root / "data-bin", root / "world" / "features.h5", root / "world")
    if (root / "ready").exists():
        return data
    from vtlm_fairseq.text.preparation import PrepareConfig, prepare
    from vtlm_fairseq.toy_world import ToyWorldConfig, build_toy_world

    print(f"building toy data in {root} ...", flush=True)
    build_toy_world(data.world, ToyWorldConfig(**world_options))
    prepare(PrepareConfig(raw_dir=str(data.world / "raw"), dest_dir=str(data.data_bin),
                          image_splits_dir=str(data.world / "image_splits"), bpe_merges=bpe_merges, force=True))  # fmt: skip
    (root / "ready").touch()
    return data


# -- fairseq ------------------------------------------------------------------


def quiet_logging() -> None:
    """fairseq logs every model at INFO and torch warns about deprecations on
    every step; benchmarks print their tables only."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")


def fairseq_setup(argv: Sequence[str]):
    """(cfg, task) exactly as fairseq-train builds them from a command line."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["--user-dir", USER_DIR] + [str(a) for a in argv])
    cfg = convert_namespace_to_omegaconf(args)
    return cfg, tasks.setup_task(cfg.task)


class TrainingLoop:
    """fairseq-train's objects (task, model, criterion, Trainer, epoch
    iterator) built from a command line, stepping one batch per update.
    With ``--num-workers 0`` data loading runs in this process (in fairseq's
    prefetch thread), so process CPU time includes it."""

    def __init__(self, argv: Sequence[str], units: str = "ntokens",
                 observe: Optional[Callable[[dict], None]] = None,
                 configure: Optional[Callable[[object], None]] = None):  # fmt: skip
        """``observe(sample)`` sees every batch; ``configure(cfg)`` may amend
        the parsed configuration before the model and Trainer are built."""
        import numpy as np
        from fairseq import utils
        from fairseq.trainer import Trainer

        self.cfg, self.task = fairseq_setup(argv)
        if configure is not None:
            configure(self.cfg)
        np.random.seed(self.cfg.common.seed)
        utils.set_torch_seed(self.cfg.common.seed)
        self.model = self.task.build_model(self.cfg.model)
        self.criterion = self.task.build_criterion(self.cfg.criterion)
        self.trainer = Trainer(self.cfg, self.task, self.model, self.criterion)
        self.units = units
        self.observe = observe
        self.last_log: Optional[dict] = None  # the last update's logging output
        # built now, so that the training set is loaded when the constructor returns
        self._epoch_itr = self.trainer.get_train_iterator(epoch=1, load_dataset=True)
        self._batches = self._forever()

    def _forever(self) -> Iterator[dict]:
        epoch_itr = self._epoch_itr
        while True:
            for sample in epoch_itr.next_epoch_itr(shuffle=True):
                yield sample
            epoch_itr = self.trainer.get_train_iterator(epoch_itr.next_epoch_idx, load_dataset=False)

    def steps(self, n: int) -> float:
        """n updates; returns the units they processed (``ntokens``: fairseq's
        words, the target tokens for translation and all tokens for masked
        LMs; ``nsentences``: sentences)."""
        done = 0.0
        for _ in range(n):
            sample = next(self._batches)
            done += float(sample[self.units])
            if self.observe is not None:
                self.observe(sample)
            log = self.trainer.train_step([sample])
            if log is not None:  # None: an update skipped (fp16 overflow)
                self.last_log = log
        return done

    def block(self, n: int) -> Block:
        return lambda: self.steps(n)

    @property
    def dataset(self):
        return self.task.dataset(self.cfg.dataset.train_subset)


# Linux records a process's peak RSS across exec, and a child starts as a
# copy of its parent: a child of a big benchmark process reports at least the
# parent's size. So a small launcher (a fresh python) starts the command and
# reports that grandchild's peak from wait4.
_RSS_LAUNCHER = """import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(f"\\npeak_rss_kb {usage.ru_maxrss} cpu_s {usage.ru_utime + usage.ru_stime} wall_s {time.perf_counter() - start}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class ProcessRun:
    """A command run to its end in a child: its tree's peak RSS (the largest
    process), CPU seconds (with the children it waited for: DataLoader
    workers), wall seconds, and its output."""

    peak_rss_mb: float
    cpu: float
    wall: float
    output: str


def run_process(command: Sequence[str], env: Optional[Dict[str, str]] = None) -> ProcessRun:
    """Raises with the output tail when the command fails."""
    proc = subprocess.run([sys.executable, "-c", _RSS_LAUNCHER, *map(str, command)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    output, _, last = proc.stdout.rstrip().rpartition("\n")
    fields = last.split()
    return ProcessRun(int(fields[1]) / 1024, float(fields[3]), float(fields[5]), output)


def peak_rss_mb(command: Sequence[str], env: Optional[Dict[str, str]] = None) -> Tuple[float, str]:
    """Runs a command; returns its peak resident set size in MB (the largest
    process of its tree) and its output."""
    run = run_process(command, env)
    return run.peak_rss_mb, run.output


def fairseq_command(name: str) -> str:
    """A console script of the running environment (fairseq-train, ...)."""
    return str(Path(sys.executable).parent / name)

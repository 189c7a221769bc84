"""Whole fairseq-train runs of issue 13's command: start-up, per-update CPU,
peak RSS (issue 13, items 2 and 3).

Each variant runs the issue's VTLM vtlm_tiny command (OMP_NUM_THREADS=1,
batch 64, Adam, 15% word and region masking, dropout 0.1) as a real
``fairseq-train`` process, twice a round: to 1 update (start-up: imports,
task, data, model, the first step) and to ``--updates`` updates; the
difference is the cost of the updates themselves. CPU is the process tree's
from wait4 (DataLoader workers included), peak RSS its largest process.
Variants run in interleaved rounds; rows compare each with its baseline
round by round. The per-update figure is a difference of two processes, so
the start-up's own spread (about +-0.5 s) moves it by about +-12 ms an
update at 41 updates: use more updates for small effects.

- ``--cpu-dropout fast`` (the default) against ``torch``: per update and
  the whole run;
- ``--num-workers 1`` against 0: per update on the tree's CPU, wall clock
  beside it;
- with ``--lean-python PATH`` (a venv holding the plugin without the
  [download] extra): the same command from that environment against this
  one. fairseq imports wandb, pandas and pyarrow at start-up when they are
  installed (img2dataset brings them), before any plugin code runs; the
  import of fairseq-train's modules and the plugin alone is measured too,
  and that environment with ``--data-buffer-size 2`` (fairseq's prefetch
  thread holds 10 batches by default).

    python benchmarks/startup.py --json work_dirs/bench/startup.json [--lean-python VENV/bin/python]
"""

import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

from benchmarks.benchlib import (  # noqa: E402
    USER_DIR,
    Report,
    Row,
    Sample,
    base_parser,
    fairseq_command,
    rotated_rounds,
    run_process,
    timed_row,
    toy_data,
)
from benchmarks.roofline import configurations  # noqa: E402


def variants(args) -> Dict[str, List[str]]:
    """Name -> fairseq-train command line without --max-update."""
    data = toy_data(args.work / "toy10k", train_pairs=10000)
    issue = configurations(data)["VTLM vtlm_tiny"] + ["--user-dir", USER_DIR, "--log-format", "none"]
    train = fairseq_command("fairseq-train")
    found = {
        "--cpu-dropout fast": [train, *issue, "--num-workers", "0"],
        "--cpu-dropout torch": [train, *issue, "--num-workers", "0", "--cpu-dropout", "torch"],
        "--num-workers 1": [train, *issue, "--num-workers", "1"],
    }
    if args.lean_python:
        lean_train = str(Path(args.lean_python).parent / "fairseq-train")
        found["lean environment"] = [lean_train, *issue, "--num-workers", "0"]
        # fairseq's prefetch thread holds --data-buffer-size batches (default 10), ~7.5 MB each here
        found["lean, --data-buffer-size 2"] = found["lean environment"] + ["--data-buffer-size", "2"]
    return found


IMPORTS = "import fairseq_cli.train, vtlm_fairseq"  # what fairseq-train loads before its first line of work


def measure_imports(pythons: Dict[str, str], repeats: int, warmup: int):
    """(samples, peak RSS per environment) of importing fairseq-train's
    modules and the plugin, in interleaved rounds."""
    samples: Dict[str, List[Sample]] = {n: [] for n in pythons}
    rss: Dict[str, List[float]] = {n: [] for n in pythons}
    for name, timed in rotated_rounds(list(pythons), repeats, warmup):
        run = run_process([pythons[name], "-c", IMPORTS])
        if timed:
            samples[name].append(Sample(run.wall, run.cpu, 1))
            rss[name].append(run.peak_rss_mb)
    return samples, rss


def measure(commands: Dict[str, List[str]], updates: int, repeats: int, warmup: int, threads: int):
    """(start-up samples, per-update samples, whole-run samples, peak RSS per
    variant): each round runs every variant to 1 and to ``updates`` updates."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    first: Dict[str, List[Sample]] = {n: [] for n in commands}
    per_update: Dict[str, List[Sample]] = {n: [] for n in commands}
    whole: Dict[str, List[Sample]] = {n: [] for n in commands}
    rss: Dict[str, List[float]] = {n: [] for n in commands}
    for name, timed in rotated_rounds(list(commands), repeats, warmup):
        one = run_process(commands[name] + ["--max-update", "1"], env)
        many = run_process(commands[name] + ["--max-update", str(updates)], env)
        if timed:
            first[name].append(Sample(one.wall, one.cpu, 1))
            per_update[name].append(Sample(many.wall - one.wall, many.cpu - one.cpu, updates - 1))
            whole[name].append(Sample(many.wall, many.cpu, 1))
            rss[name].append(max(one.peak_rss_mb, many.peak_rss_mb))
    return first, per_update, whole, rss


def rss_row(rss: Dict[str, List[float]], variant: str, baseline: str) -> Row:
    v, b = max(rss[variant]), max(rss[baseline])
    return Row("startup", "peak RSS (MB)", variant, baseline, v, b, v / b,
               note=f"issue 13's reference figure: 700 MB; runs: {sorted(round(x) for x in rss[variant])}")  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--updates", type=int, default=31, help="updates of the longer run (default: 31)")
    parser.add_argument("--lean-python", help="python of a venv without the [download] extra: a variant run from it")
    args = parser.parse_args(argv)
    if args.lean_python and not os.access(Path(args.lean_python).parent / "fairseq-train", os.X_OK):
        parser.error(f"--lean-python {args.lean_python}: no fairseq-train beside it (a venv's bin/python is expected)")
    commands = variants(args)
    first, per_update, whole, rss = measure(commands, args.updates, args.repeats, args.warmup, args.threads)
    report = Report("startup", args)
    fast = "--cpu-dropout fast"
    row = timed_row("startup", "updates/s", per_update, fast, "--cpu-dropout torch")
    row.note = f"per update {1000 / row.value:.0f} ms vs {1000 / row.baseline_value:.0f} ms of CPU"
    report.add(row)
    report.add(timed_row("startup", "runs/s", whole, fast, "--cpu-dropout torch",
                         note=f"{args.updates} updates with start-up"))  # fmt: skip
    row = timed_row("startup", "updates/s", per_update, "--num-workers 1", fast, ">= 1.0", clock="cpu",
                    note="CPU of the whole process tree (wait4: the worker included)")  # fmt: skip
    report.add(row)
    for name in commands:
        if name != fast:
            report.add(rss_row(rss, name, fast))
    if "lean environment" in commands:
        report.add(rss_row(rss, "lean, --data-buffer-size 2", "lean environment"))
        report.add(timed_row("startup", "updates/s", per_update, "lean, --data-buffer-size 2", "lean environment"))
        row = timed_row("startup", "runs/s", first, "lean environment", fast,
                        note="start-up + 1 update")  # fmt: skip
        report.add(row)
        pythons = {"lean environment": args.lean_python, "this environment": sys.executable}
        samples, import_rss = measure_imports(pythons, args.repeats, args.warmup)
        cpu = {n: sorted(round(s.cpu, 2) for s in samples[n]) for n in pythons}
        report.add(timed_row("startup", "imports/s", samples, "lean environment", "this environment",
                             note=f"{IMPORTS}: CPU s {cpu['lean environment']} vs {cpu['this environment']}"))
        lean_mb, this_mb = max(import_rss["lean environment"]), max(import_rss["this environment"])
        report.add(Row("startup", "import peak RSS (MB)", "lean environment", "this environment", lean_mb, this_mb,
                       lean_mb / this_mb, note=IMPORTS))  # fmt: skip
    for name in commands:
        cpu = sorted(s.cpu for s in first[name])
        report.extra[f"start-up + 1 update CPU s, {name}"] = [round(c, 2) for c in cpu]
    report.extra[f"peak RSS MB, {fast}"] = sorted(round(x) for x in rss[fast])
    report.finish()


if __name__ == "__main__":
    main()

"""The benchmarks' shared machinery: interleaving, paired ratios, targets,
tables and JSON (fast: no fairseq model is built)."""

import json
from argparse import Namespace

import pytest

from benchmarks.benchlib import Report, Row, Sample, format_rows, interleaved, round_ratios, timed_row


def test_rounds_rotate_and_warmup_is_not_kept():
    calls = []
    blocks = {name: (lambda name=name: calls.append(name) or 1.0) for name in "ABC"}
    samples = interleaved(blocks, repeats=3, warmup=1)
    assert calls == list("ABC" "BCA" "CAB" "ABC")  # rotated start each round
    assert {name: len(s) for name, s in samples.items()} == {"A": 3, "B": 3, "C": 3}


def test_before_runs_untimed_ahead_of_each_block():
    order = []
    interleaved({"A": lambda: order.append("A") or 1.0}, repeats=2, warmup=0, before=order.append)
    assert order == ["A", "A", "A", "A"]


def test_ratio_is_the_median_of_per_round_ratios():
    # round 2 ran under load for both variants: its paired ratio is unaffected
    variant = [Sample(wall=1.0, cpu=1.0, units=9), Sample(wall=5.0, cpu=1.0, units=9), Sample(1.0, 1.0, 9)]
    baseline = [Sample(1.0, 1.0, 10), Sample(5.0, 1.0, 10), Sample(1.0, 1.0, 10)]
    assert round_ratios(variant, baseline, "wall") == pytest.approx([0.9, 0.9, 0.9])
    row = timed_row("b", "units/s", {"v": variant, "base": baseline}, "v", "base", ">= 0.95", clock="wall")
    assert row.ratio == pytest.approx(0.9) and row.met is False and row.measure == "units/s (wall)"
    assert row.value == pytest.approx(9.0) and row.other_clock_ratio == pytest.approx(0.9)


@pytest.mark.parametrize("target,ratio,met", [(">= 0.95", 0.96, True), (">= 10", 1.2, False),
                                              ("<= 0.55", 0.5, True), ("<= 1.05", 1.3, False), (None, 2.0, None)])  # fmt: skip
def test_targets(target, ratio, met):
    assert Row("b", "m", "v", "base", 1.0, 1.0, ratio, target=target).met is met


def test_report_table_and_json(tmp_path, capsys):
    report = Report("demo", Namespace(json=str(tmp_path / "out" / "demo.json")))
    report.add(Row("1 overhead", "words/s (cpu)", "ours", "fairseq", 950.0, 1000.0, 0.95, ">= 0.95", repeats=7,
                   ratio_min=0.9, ratio_max=1.0, note="n"))  # fmt: skip
    report.finish()
    out = capsys.readouterr().out
    assert "targets: 1 met, 0 missed" in out and "0.90-1.00" in out
    saved = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert saved["rows"][0]["met"] is True and saved["environment"]["torch_threads"] >= 1
    assert format_rows(report.rows).splitlines()[0].startswith("benchmark")


def test_run_process_reports_the_childs_cpu_memory_and_output():
    import sys

    from benchmarks.benchlib import run_process

    script = ("import time; b = bytearray(150 * 2**20); end = time.process_time() + 0.3\n"
              "while time.process_time() < end: pass\nprint('done')")  # fmt: skip
    run = run_process([sys.executable, "-c", script])
    assert run.cpu >= 0.28 and run.wall >= run.cpu * 0.5
    assert run.peak_rss_mb >= 150
    assert run.output.strip() == "done"

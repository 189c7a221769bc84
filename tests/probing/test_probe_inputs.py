"""vtlm-probe on bad input: one line naming the file and the problem, exit
status 2, never a traceback; checkpoints are read weights-only whatever
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says; help texts; stdout carries the rows
alone."""

import argparse
import json
import logging
import subprocess
from types import SimpleNamespace

import pytest

from tests.conftest import fairseq_command
from tests.probing.probe_helpers import (
    crafted_checkpoint, edited_checkpoint, other_dictionary_bin, run_probe, wider_store,
)  # fmt: skip
from vtlm_fairseq.cli import probe


@pytest.fixture(scope="module")
def p(toy_data, vtlm_checkpoint, mmt_checkpoint, nmt_checkpoint, tlm_checkpoint, tmp_path_factory):
    data, store, world = toy_data
    root = tmp_path_factory.mktemp("probe_inputs")
    files = {"text": "not a checkpoint\n", "broken.jsonl": "{broken\n", "words.json": '{"animals": ["bat"]}\n',
             "one_line.txt": "ein satz .\n"}  # fmt: skip
    for name, content in files.items():
        (root / name).write_text(content)
    return SimpleNamespace(
        data=data, store=store, world=world, root=root, vtlm=vtlm_checkpoint, mmt=mmt_checkpoint,
        nmt=nmt_checkpoint, tlm=tlm_checkpoint, text=root / "text", broken=root / "broken.jsonl",
        words=root / "words.json", one_line=root / "one_line.txt",
        test_size=len((data / "test.order").read_text().split()),
        other_dict=other_dictionary_bin(data, root / "other_dict"), wide_store=wider_store(store, root / "wide.h5"),
        gone_data=edited_checkpoint(vtlm_checkpoint, root / "gone_data.pt", data=str(root / "moved")),
    )  # fmt: skip


def data(p, store=None, bin=None):
    return ["--data", bin or p.data, "--region-features", store or p.store]


def suite(p, *args):
    return ["suite", *data(p), "--out", p.root / "suite", *args]


# case -> (command line, what the one line must name)
CASES = {
    "regions on a TLM": (lambda p: ["regions", p.tlm, *data(p)], lambda p: [p.tlm, "pre-trained TLM", "VTLM"]),
    "last-word on an MMT": (lambda p: ["last-word", p.mmt, *data(p)], lambda p: [p.mmt, "(MMT)", "TLM or VTLM"]),
    "last-word on an NMT": (lambda p: ["last-word", p.nmt, *data(p)], lambda p: [p.nmt, "(NMT)"]),
    "ambiguous on an MMT": (
        lambda p: ["ambiguous", p.mmt, *data(p), "--annotations", p.world / "ambiguity" / "valid.jsonl"],
        lambda p: [p.mmt, "(MMT)"],
    ),
    "attention on a VTLM": (lambda p: ["attention", p.vtlm, *data(p), "--out", p.root / "a.png"],
                            lambda p: [p.vtlm, "VTLM", "MMT"]),  # fmt: skip
    "attention on an NMT": (lambda p: ["attention", p.nmt, *data(p), "--out", p.root / "a.png"],
                            lambda p: [p.nmt, "(NMT)", "MMT"]),  # fmt: skip
    "missing checkpoint": (lambda p: ["last-word", p.root / "nope.pt"], lambda p: [p.root / "nope.pt", "no such"]),
    "text file as checkpoint": (lambda p: ["regions", p.text], lambda p: [p.text, "not a fairseq checkpoint"]),
    "VTLM, other dictionary": (lambda p: ["last-word", p.vtlm, *data(p, bin=p.other_dict)],
                               lambda p: [p.vtlm, p.other_dict]),  # fmt: skip
    "MMT, other dictionary": (lambda p: ["attention", p.mmt, *data(p, bin=p.other_dict), "--out", p.root / "a.png"],
                              lambda p: [p.mmt, "dictionary"]),  # fmt: skip
    "VTLM, store of another dimension": (lambda p: ["regions", p.vtlm, *data(p, store=p.wide_store)],
                                         lambda p: [p.vtlm, "feature"]),  # fmt: skip
    "MMT, store of another dimension": (
        lambda p: ["attention", p.mmt, *data(p, store=p.wide_store), "--out", p.root / "a.png"],
        lambda p: [p.mmt, "feature"],
    ),
    "missing --data folder": (lambda p: ["last-word", p.vtlm, *data(p, bin=p.root / "nowhere")],
                              lambda p: [p.root / "nowhere", "no such data-bin folder"]),  # fmt: skip
    "trained data-bin gone, no --data": (lambda p: ["last-word", p.gone_data],
                                         lambda p: [p.root / "moved", p.gone_data, "give the data-bin"]),  # fmt: skip
    "missing split": (lambda p: ["last-word", p.vtlm, *data(p), "--split", "nosuch"],
                      lambda p: [p.data, "split 'nosuch'"]),  # fmt: skip
    "--seeds empty": (lambda p: ["last-word", p.vtlm, "--seeds"], lambda p: ["--seeds"]),
    "--seeds twice": (lambda p: ["last-word", p.vtlm, "--seeds", "2", "2"], lambda p: ["--seeds", "2 given twice"]),
    "--index out of range": (
        lambda p: ["attention", p.mmt, *data(p), "--index", "0", p.test_size, "--out", p.root / "a.png"],
        lambda p: [p.data, f"no sentence {p.test_size}"],
    ),
    "--index negative": (lambda p: ["attention", p.mmt, "--index", "-1", "--out", p.root / "a.png"],
                         lambda p: ["--index"]),  # fmt: skip
    "--index twice": (lambda p: ["attention", p.mmt, "--index", "1", "1", "--out", p.root / "a.png"],
                      lambda p: ["--index", "1 given twice"]),  # fmt: skip
    "annotations not JSON": (lambda p: ["ambiguous", p.vtlm, *data(p), "--annotations", p.broken],
                             lambda p: [f"{p.broken}:1", "not JSON"]),  # fmt: skip
    "annotations missing": (lambda p: ["ambiguous", p.vtlm, "--annotations", p.root / "nope.jsonl"],
                            lambda p: [p.root / "nope.jsonl", "no such file"]),  # fmt: skip
    "annotations of another split": (
        lambda p: ["ambiguous", p.vtlm, *data(p), "--annotations", p.world / "ambiguity" / "test.jsonl"],
        lambda p: [p.world / "ambiguity" / "test.jsonl", "split 'valid'"],
    ),
    "--words not JSON": (lambda p: suite(p, "--translation", p.nmt, "--words", p.broken),
                         lambda p: [p.broken, "not a JSON word list"]),  # fmt: skip
    "--words of another format": (lambda p: suite(p, "--translation", p.nmt, "--words", p.words),
                                  lambda p: [p.words, "neither an entity word list"]),  # fmt: skip
    "--words missing": (lambda p: suite(p, "--translation", p.nmt, "--words", p.root / "nope.json"),
                        lambda p: [p.root / "nope.json", "no such"]),  # fmt: skip
    "suite --out is a file": (lambda p: ["suite", "--translation", p.nmt, "--out", p.text],
                              lambda p: [p.text, "not a folder"]),  # fmt: skip
    "suite without checkpoints": (lambda p: suite(p), lambda p: ["no checkpoints"]),
    "suite --pretrained MMT": (lambda p: suite(p, "--pretrained", p.mmt), lambda p: [p.mmt, "--pretrained"]),
    "suite --translation VTLM": (lambda p: suite(p, "--translation", p.vtlm), lambda p: [p.vtlm, "--translation"]),
    "suite, a later checkpoint missing": (
        lambda p: suite(p, "--pretrained", p.vtlm, "--translation", p.root / "gone" / "x.pt"),
        lambda p: [p.root / "gone" / "x.pt", "no such checkpoint"],
    ),
    "suite, a name twice": (lambda p: suite(p, "--pretrained", f"A={p.vtlm}", f"A={p.tlm}"),
                            lambda p: ["--pretrained", "A given twice"]),  # fmt: skip
    "suite --references of another length": (
        lambda p: suite(p, "--translation", p.nmt, "--references", p.one_line),
        lambda p: [p.one_line, f"1 references for the {p.test_size} sentences"],
    ),
    "suite --annotations without SPLIT=": (lambda p: suite(p, "--translation", p.nmt, "--annotations", p.broken),
                                           lambda p: ["--annotations", "SPLIT=FILE"]),  # fmt: skip
    "suite --annotations of an unused split": (
        lambda p: suite(p, "--translation", p.nmt, "--annotations", f"dev={p.world / 'ambiguity' / 'test.jsonl'}"),
        lambda p: ["split(s) dev"],
    ),
    "suite --beam 0": (lambda p: suite(p, "--translation", p.nmt, "--beam", "0"), lambda p: ["--beam"]),
    "regions --region-mask-prob 0": (lambda p: ["regions", p.vtlm, "--region-mask-prob", "0"],
                                     lambda p: ["--region-mask-prob"]),  # fmt: skip
    "attention --out in a missing folder": (
        lambda p: ["attention", p.mmt, "--out", p.root / "nodir" / "a.png"],
        lambda p: [p.root / "nodir", "no such folder"],
    ),
    "attention --out not a picture": (lambda p: ["attention", p.mmt, "--out", p.root / "a.txt"],
                                      lambda p: [p.root / "a.txt", "picture"]),  # fmt: skip
    "attention --image-dir missing": (
        lambda p: ["attention", p.mmt, "--out", p.root / "a.png", "--image-dir", p.root / "noimages"],
        lambda p: [p.root / "noimages", "no such folder"],
    ),
    "--json is a folder": (lambda p: ["last-word", p.tlm, "--json", p.root], lambda p: [p.root, "is a folder"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_it(p, case, caplog, capsys):
    argv, named = CASES[case]
    assert run_probe(argv(p)) == 2
    # ours are logged, argparse's printed on stderr
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    lines = errors or capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "\n" not in lines[0], lines
    for part in named(p):
        assert str(part) in lines[0], lines[0]


def test_crafted_checkpoint_is_refused_without_running_it(p, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would let torch.load run code
    marker = p.root / "marker"
    crafted = crafted_checkpoint(p.vtlm, p.root / "crafted.pt", marker)
    for argv in (["last-word", crafted, *data(p)], suite(p, "--pretrained", crafted)):
        caplog.clear()
        status = run_probe(argv)
        assert not marker.exists()
        assert status == 2 and f"{crafted}: refused to load" in caplog.text and "write_marker" in caplog.text


def test_every_option_has_help_with_its_default():
    (subparsers,) = [a for a in probe.get_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command, parser in subparsers.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (command, action.dest)
            if action.option_strings:
                assert "default" in action.help or "required" in action.help, (command, action.dest, action.help)


def test_tlm_last_word_rows_on_stdout_logs_on_stderr(p, tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run(
        [fairseq_command("vtlm-probe"), "last-word", str(p.tlm), *map(str, data(p)), "--seeds", "1",
         "--json", str(rows_file)], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but the rows
    assert rows == json.loads(rows_file.read_text())
    assert {r["images"] for r in rows} == {"aligned"}  # text-only: no shuffled images
    assert "no region layers" in proc.stderr and "| INFO |" in proc.stderr

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.data.test_feature_store import make_store
from tests.features.test_reference_features import reference_pickle
from tests.data.store_helpers import random_regions
from tests.conftest import REPO
from vtlm_fairseq.cli import features, prepare, toy_world


def console_scripts():
    """name -> module of every console script setup.py declares."""
    import re

    found = re.findall(r'"(vtlm-[a-z-]+)=(vtlm_fairseq\.cli\.\w+):cli_main"', (REPO / "setup.py").read_text())
    assert len(found) >= 8, found
    return dict(found)


COMMANDS = console_scripts()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help(name, capsys):
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(COMMANDS[name]).cli_main(["--help"])
    assert e.value.code == 0
    assert name in capsys.readouterr().out


def test_console_entry_points_are_installed():
    """setup.py's console scripts exist beside this Python (pip install -e .)."""
    bin_dir = Path(sys.executable).parent
    for name in COMMANDS:
        exe = bin_dir / name
        assert exe.exists(), f"{exe} missing: install the package with pip install -e ."
    out = subprocess.run(
        [str(bin_dir / "vtlm-features"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "import" in out and "validate" in out


def test_toy_world_build_and_score(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        toy_world.cli_main(
            ["build", str(tmp_path / "w"), "--train-pairs", "60", "--valid-pairs", "10",
             "--test-pairs", "10", "--num-regions", "12", "--feature-dim", "4"]
        )  # fmt: skip
    assert e.value.code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["pairs"] == 60
    ref = tmp_path / "w" / "raw" / "test.de"
    annotations = tmp_path / "w" / "ambiguity" / "test.jsonl"
    with pytest.raises(SystemExit) as e:
        toy_world.cli_main(["score", "--hyp", str(ref), "--annotations", str(annotations)])
    assert e.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 100.0 and result["ambiguous_words"] > 0


def test_prepare_reports_bad_input_and_exits_2(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.en").write_text("a\nb\n")
    (raw / "train.de").write_text("x\n")
    with pytest.raises(SystemExit) as e:
        prepare.cli_main([str(raw), str(tmp_path / "bin")])
    assert e.value.code == 2
    assert "train.en:2: line has no counterpart" in caplog.text


def test_features_commands(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    pk = tmp_path / "pk"
    pk.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        reference_pickle(pk / f"{name}.pkl", random_regions(rng, 5, 8))
    (pk / "broken.jpg.pkl").write_bytes(b"garbage")
    order = tmp_path / "train.order"
    order.write_text("a.jpg\nb.jpg\nc.jpg\n")
    store = str(tmp_path / "s.h5")

    with pytest.raises(SystemExit) as e:
        features.cli_main(["import", str(pk), store, "--order", str(order)])
    assert e.value.code == 2  # an order-file image has no pickle
    assert "imported 2 images" in caplog.text and "broken.jpg.pkl" in caplog.text
    assert "train.order:3: c.jpg" in caplog.text and capsys.readouterr().out == ""

    with pytest.raises(SystemExit) as e:
        features.cli_main(["validate", store, "--order", str(order)])
    assert e.value.code == 2 and "train.order:3: image 'c.jpg' is not in" in caplog.text

    with pytest.raises(SystemExit) as e:
        features.cli_main(["inspect", store, "--image", "a.jpg"])
    summary = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert e.value.code == 0 and summary["images"] == 2 and len(summary["regions"]["a.jpg"]) == 5

    make_store(tmp_path / "other.h5", prefix="z", dim=8)
    with pytest.raises(SystemExit) as e:
        features.cli_main(["merge", str(tmp_path / "m.h5"), store, str(tmp_path / "other.h5")])
    assert e.value.code == 2  # R differs (36 vs 6): refused with the reason
    assert "R=6, D=8, classes=601 differ from" in caplog.text
    with pytest.raises(SystemExit) as e:
        features.cli_main(["merge", store, store])
    assert e.value.code == 2 and "the output is also an input" in caplog.text
    with pytest.raises(SystemExit) as e:
        features.cli_main(["import", str(pk), store])
    assert e.value.code == 2 and "s.h5: exists already" in caplog.text

    with pytest.raises(SystemExit) as e:
        features.cli_main(["export", store, str(tmp_path / "out"), "--image", "b.jpg"])
    assert e.value.code == 0 and (tmp_path / "out" / "b.jpg.pkl").exists()

    with pytest.raises(SystemExit) as e:
        features.cli_main(["inspect", str(tmp_path / "nothing.h5")])
    assert e.value.code == 2 and "nothing.h5: no such feature store" in caplog.text


def test_features_inspect_stdout_is_json_alone(tmp_path):
    """As a user pipes it: the plugin's import (fairseq and its log lines)
    must not reach stdout."""
    make_store(tmp_path / "s.h5", dim=8)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "vtlm-features"), "inspect", str(tmp_path / "s.h5")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["feature_dim"] == 8


# --- vtlm-prepare, vtlm-toy-world, vtlm-score: bad input is one line, exit 2 ---


def error_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_prepare_split_missing_a_language_is_one_line(tmp_path, caplog):
    """val.en without val.de: the split was dropped without a word."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("train.en", "train.de", "val.en"):
        (raw / name).write_text("a b\n")
    with pytest.raises(SystemExit) as e:
        prepare.cli_main([str(raw), str(tmp_path / "bin"), "--workers", "1"])
    assert e.value.code == 2
    assert error_lines(caplog) == [
        f"{raw / 'val.de'}: no such file (nor .gz), but {raw / 'val.en'} is there: every split needs both "
        "languages (or choose the splits to prepare with --splits)"
    ]
    assert not (tmp_path / "bin").exists()


def test_toy_world_too_few_regions_is_one_line(tmp_path, caplog, capsys):
    """--num-regions 4 died with a ValueError traceback."""
    from vtlm_fairseq.toy_world.scenes import MIN_REGIONS

    with pytest.raises(SystemExit) as e:
        toy_world.cli_main(["build", str(tmp_path / "w"), "--num-regions", "4"])
    assert e.value.code == 2
    (line,) = error_lines(caplog)
    assert line.startswith(f"--num-regions 4: the minimum is {MIN_REGIONS} regions")
    assert capsys.readouterr().out == "" and not (tmp_path / "w").exists()


def test_toy_world_score_bad_inputs_are_one_line(tmp_path, caplog):
    (tmp_path / "hyp.txt").write_text("a\nb\n")
    (tmp_path / "ann.jsonl").write_text("[]\n")
    for argv, message in [
        (["--hyp", tmp_path / "none.txt", "--annotations", tmp_path / "ann.jsonl"], "none.txt: no such file"),
        (["--hyp", tmp_path / "hyp.txt", "--annotations", tmp_path / "ann.jsonl"], "2 hypotheses for 1 annotated"),
    ]:
        caplog.clear()
        with pytest.raises(SystemExit) as e:
            toy_world.cli_main(["score", *map(str, argv)])
        assert e.value.code == 2 and len(error_lines(caplog)) == 1 and message in caplog.text


@pytest.mark.parametrize("name", ["vtlm-prepare", "vtlm-score", "vtlm-toy-world", "vtlm-convert-checkpoint"])
def test_every_option_help_gives_its_default(name):
    import argparse
    import importlib

    parser = importlib.import_module(COMMANDS[name]).get_parser()
    parsers = [parser] + [
        sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]  # fmt: skip
    for p in parsers:
        for action in p._actions:
            optional = action.option_strings and not action.required  # required ones have no default
            if optional and "-h" not in action.option_strings:
                assert action.help and "default" in action.help, f"{name} {action.option_strings}"


def test_features_inspect_checks_what_it_summarises(tmp_path, caplog):
    import h5py

    make_store(tmp_path / "s.h5", dim=8)
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f["classes"][0, 0] = 900
    with pytest.raises(SystemExit) as e:
        features.cli_main(["inspect", str(tmp_path / "s.h5")])
    assert e.value.code == 2 and "class id 900 outside" in caplog.text

"""vtlm-extract-features: the console command, its errors and the documented
shards-then-merge recipe."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.features import tiny_detector as tiny
from vtlm_fairseq.cli import extract_features, features
from vtlm_fairseq.data.feature_store import FeatureStore


def test_help_needs_no_tensorflow(capsys):
    with pytest.raises(SystemExit) as e:
        extract_features.cli_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "vtlm-extract-features" in out and "--num-shards" in out


def test_bad_image_list_exits_2_naming_the_line(tmp_path, caplog):
    image_list = tmp_path / "list.txt"
    image_list.write_text("a.jpg\nb .jpg\n")
    with pytest.raises(SystemExit) as e:
        extract_features.cli_main(["--detector", str(tmp_path), "--image-dir", str(tmp_path),
                                   "--image-list", str(image_list), "--output", str(tmp_path / "f.h5")])  # fmt: skip
    assert e.value.code == 2
    assert "list.txt:2: image name contains whitespace" in caplog.text


def test_two_shard_processes_then_merge(tmp_path, caplog):
    """The README recipe: shard 0 as a console command (its own process, as
    on its own GPU), shard 1 in this process, then vtlm-features merge."""
    caplog.set_level(logging.INFO)
    tiny.require_tensorflow()
    detector = tiny.build_tiny_detector(tmp_path / "detector")
    good = tiny.make_image_folder(tmp_path / "images")
    (tmp_path / "images.txt").write_text(tiny.IMAGE_LIST)
    common = ["--detector", detector, "--image-dir", tmp_path / "images", "--image-list",
              tmp_path / "images.txt", "--num-shards", 2, "--max-regions", 3, "--num-classes",
              tiny.NUM_CLASSES, "--batch-size", 2]  # fmt: skip
    command = Path(sys.executable).parent / "vtlm-extract-features"
    assert command.exists(), f"{command} missing: install the package with pip install -e ."
    proc = subprocess.run(
        [str(a) for a in [command, *common, "--shard-id", 0, "--output", tmp_path / "part0.h5",
                          "--report", tmp_path / "failed0.jsonl"]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shard 0 of 2: 6 images of 11 unique names" in proc.stderr and proc.stdout == ""
    assert "img/s" in proc.stderr  # the progress bar
    shard0 = [json.loads(line)["image"] for line in (tmp_path / "failed0.jsonl").read_text().splitlines()]

    with pytest.raises(SystemExit) as e:
        extract_features.cli_main([str(a) for a in [*common, "--shard-id", 1, "--output", tmp_path / "part1.h5",
                                                    "--no-progress"]])  # fmt: skip
    assert e.value.code == 0 and "shard 1 of 2: 5 images of 11 unique names" in caplog.text
    shard1 = [json.loads(line)["image"] for line in (tmp_path / "part1.failures.jsonl").read_text().splitlines()]
    assert sorted(shard0 + shard1) == sorted(tiny.FAILED)

    with pytest.raises(SystemExit) as e:
        features.cli_main(["merge", str(tmp_path / "all.h5"), str(tmp_path / "part0.h5"), str(tmp_path / "part1.h5")])
    assert e.value.code == 0
    assert sorted(FeatureStore(tmp_path / "all.h5").names) == sorted(good)


def test_sigkilled_command_resumes(tmp_path):
    """The console command SIGKILLed at seeded random moments once it has
    written its first part, twice, then run to the end: the store is
    the one an uninterrupted run writes (tests/features/test_resumable_store.py
    kills the store code itself at many more moments)."""
    import random
    import signal
    import time

    from tests.features.test_region_extraction import assert_store_holds
    from vtlm_fairseq.features.resumable_store import parts_dir

    tiny.require_tensorflow()
    detector = tiny.build_tiny_detector(tmp_path / "detector")
    good = tiny.make_image_folder(tmp_path / "images")
    (tmp_path / "images.txt").write_text(tiny.IMAGE_LIST)
    output = tmp_path / "f.h5"
    command = [str(a) for a in [Path(sys.executable).parent / "vtlm-extract-features", "--detector", detector,
               "--image-dir", tmp_path / "images", "--image-list", tmp_path / "images.txt", "--output", output,
               "--max-regions", 3, "--num-classes", tiny.NUM_CLASSES, "--part-images", 1, "--no-progress"]]  # fmt: skip
    rng = random.Random(12)
    killed = 0
    for _ in range(2):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and not list(parts_dir(output).glob("part-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 1
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_store_holds(output, good)
    assert not parts_dir(output).exists()

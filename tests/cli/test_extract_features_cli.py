"""vtlm-extract-features: the console command, its errors and the documented
sharded recipe (shards read as one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.features import tiny_detector as tiny
from vtlm_fairseq.cli import extract_features
from vtlm_fairseq.data.feature_store import FeatureStore, open_store


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


def test_sharded_extraction_script_shards_read_as_one(tmp_path):
    """examples/conceptual_captions/extract_features.sh: two shard processes
    (as on two GPUs) into one folder, read as one store without a merge;
    MERGE=ONE.h5 merges them too (small sets)."""
    tiny.require_tensorflow()
    detector = tiny.build_tiny_detector(tmp_path / "detector")
    good = tiny.make_image_folder(tmp_path / "images")
    (tmp_path / "images.txt").write_text(tiny.IMAGE_LIST)
    script = REPO / "examples" / "conceptual_captions" / "extract_features.sh"
    env = {**os.environ, "GPUS": "2", "MERGE": str(tmp_path / "all.h5"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.run(["bash", str(script), str(detector), str(tmp_path / "images"), str(tmp_path / "images.txt"),
                           str(tmp_path / "shards"), "--max-regions", "3", "--num-classes", str(tiny.NUM_CLASSES),
                           "--batch-size", "2"], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "shards").glob("*.h5"))
    assert shards == ["shard-0-of-2.h5", "shard-1-of-2.h5"]
    logs = [(tmp_path / "shards" / f"{name}.log").read_text() for name in shards]
    assert "shard 0 of 2: 6 images of 11 unique names" in logs[0]
    assert "shard 1 of 2: 5 images of 11 unique names" in logs[1]
    failed = [json.loads(line)["image"] for name in ("shard-0-of-2", "shard-1-of-2")
              for line in (tmp_path / "shards" / f"{name}.failures.jsonl").read_text().splitlines()]  # fmt: skip
    assert sorted(failed) == sorted(tiny.FAILED)
    store = open_store(str(tmp_path / "shards"))
    assert sorted(store.names) == sorted(good)
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

"""examples/multi30k/grounding.sh's orchestration, with stand-ins for the
fairseq and vtlm commands (the real recipe trains for an hour): which
systems and pre-trainings run, that a failed training stops it even when it
runs beside another, and that probing a new system keeps the others."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "examples" / "multi30k" / "grounding.sh"
ALL = ["nmt", "nmt_tlm", "mmt", "mmt_vtlm", "mmt_degraded", "mmt_vtlm_degraded", "mmt_vtlm_entity"]

# stand-ins: each logs its call; fairseq-train writes a checkpoint (or fails for $FAIL)
STUBS = {
    "vtlm-prepare": 'mkdir -p "$2" && echo {} > "$2/prepare.json"',
    # a store that records its settings, as caption-detections' does
    "vtlm-toy-world": """pool=""; prev=""; for a in "$@"; do [ "$prev" = --scene-pool ] && pool="$a"; prev="$a"; done
python - "$4" "$pool" <<'PY'
import h5py, json, sys
with h5py.File(sys.argv[1], "w") as f:
    f.attrs["simulation"] = json.dumps({"scene_pool": sys.argv[2]})
PY
echo {}""",
    "fairseq-train": """save=""; prev=""; for a in "$@"; do [ "$prev" = --save-dir ] && save="$a"; prev="$a"; done
name="$(basename "$save")"; echo "$name" >> "$STUB_LOG"
sleep "${STUB_SLEEP:-0.1}"
[ "$name" = "${FAIL:-}" ] && exit 3
mkdir -p "$save" && touch "$save/checkpoint_last.pt\"""",
    "vtlm-probe": """out=""; prev=""; models=(); for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"
case "$a" in *=*checkpoint_last.pt) models+=("${a%%=*}");; esac; done
echo "probe ${models[*]}" >> "$STUB_LOG"; mkdir -p "$out"
python - "$out/probes.json" "${models[@]}" <<'PY'
import json, sys
rows = [{"probe": "entity_masking", "model": m, "images": "none", "mode": mode, "bleu_detok": 1.0,
         "entity_recall": 1.0, "entities": 1} for m in sys.argv[2:] for mode in ("none", "mask")]
json.dump(rows, open(sys.argv[1], "w"))
PY""",
}


def run(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for name, body in STUBS.items():
            (bin_dir / name).write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body + "\n")
            (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "STUB_LOG": str(log), "VTLM_SHARED": str(tmp_path / "shared"), **env}  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "work"), "10", "20"], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    calls = log.read_text().split("\n")[:-1] if log.exists() else []
    return proc, calls


def test_all_systems_in_two_jobs_then_one_probe_of_all(tmp_path):
    proc, calls = run(tmp_path, JOBS="2")
    assert proc.returncode == 0, proc.stderr
    trained = [c for c in calls if not c.startswith("probe")]
    assert sorted(trained) == sorted(ALL + ["tlm", "vtlm", "vtlm_entity"])
    # fine-tunings start after their pre-training
    for system, pretrained in (("nmt_tlm", "tlm"), ("mmt_vtlm", "vtlm"), ("mmt_vtlm_entity", "vtlm_entity")):
        assert trained.index(pretrained) < trained.index(system)
    assert calls[-1] == "probe " + " ".join(ALL)
    assert "| mmt_vtlm_entity |" in proc.stdout  # the table


def test_subset_trains_only_what_it_needs_and_a_new_system_is_probed_with_the_old(tmp_path):
    proc, calls = run(tmp_path, SYSTEMS="nmt nmt_tlm")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["tlm", "nmt", "nmt_tlm", "probe nmt nmt_tlm"]
    proc, calls = run(tmp_path, SYSTEMS="mmt_vtlm")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["vtlm", "mmt_vtlm", "probe nmt nmt_tlm mmt_vtlm"]  # finished stages reused
    rows = json.loads((tmp_path / "work" / "probes" / "probes.json").read_text())
    assert {r["model"] for r in rows} == {"nmt", "nmt_tlm", "mmt_vtlm"}
    proc, calls = run(tmp_path, SYSTEMS="nmt mmt_vtlm")
    assert proc.returncode == 0 and calls == []  # all there: nothing to do


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failed_training_stops_the_recipe(tmp_path, jobs):
    # mmt fails at the same moment as the training beside it ends
    proc, calls = run(tmp_path, JOBS=jobs, FAIL="mmt", SYSTEMS="nmt mmt mmt_degraded", STUB_SLEEP="0.3")
    assert proc.returncode != 0
    assert not any(c.startswith("probe") for c in calls)
    assert not (tmp_path / "work" / "mmt" / "finished").exists()


@pytest.mark.parametrize("env, message", [({"SYSTEMS": "nmt foo"}, "SYSTEMS: no system 'foo'"),
                                          ({"JOBS": "0"}, "JOBS=0"),
                                          ({"SCENE_POOL": "named"}, "made with SCENE_POOL=non-entity")])  # fmt: skip
def test_bad_settings_are_one_line(tmp_path, env, message):
    if "SCENE_POOL" in env:  # a store made with the default pool, reused with another
        assert run(tmp_path, SYSTEMS="nmt")[0].returncode == 0
    proc, calls = run(tmp_path, **env)
    assert proc.returncode == 2 and calls == []
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr

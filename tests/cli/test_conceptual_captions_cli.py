"""vtlm-cc end to end: TSVs with dead, broken and malformed entries in every
split -> downloaded images -> filtered splits -> a data-bin."""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.corpora.test_conceptual_captions import make_store
from vtlm_fairseq.cli import conceptual_captions as cc
from vtlm_fairseq.corpora.conceptual_captions import filter_splits
from vtlm_fairseq.corpora.image_download import RECORDS_DIR

VTLM_CC = str(Path(sys.executable).parent / "vtlm-cc")


def vtlm_cc(*argv) -> int:
    """Runs the command in-process; its exit status (run_command always exits)."""
    with pytest.raises(SystemExit) as e:
        cc.cli_main([str(a) for a in argv])
    return e.value.code


def summary_of(capsys, *argv) -> dict:
    """A successful run's summary: stdout carries the JSON and nothing else."""
    assert vtlm_cc(*argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv", [["--help"], ["download", "--help"], ["filter", "--help"], ["prepare", "--help"]])
def test_help(argv, capsys):
    assert vtlm_cc(*argv) == 0
    assert "vtlm-cc" in capsys.readouterr().out


def subcommand_parsers():
    (sub,) = [a for a in cc.get_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", ["download", "filter", "prepare"])
def test_every_option_says_what_it_does_and_its_default(command):
    parser = subcommand_parsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.dest}: no help"
        if action.option_strings:
            expected = "(required)" if action.required else "default"
            assert expected in action.help, f"{command} {action.option_strings[0]}: {action.help!r}"


def test_console_entry_point_is_installed():
    assert Path(VTLM_CC).exists(), f"{VTLM_CC} missing: install the package with pip install -e ."
    out = subprocess.run([VTLM_CC, "--help"], capture_output=True, text=True, check=True).stdout
    assert "download" in out and "filter" in out and "prepare" in out


def write_tsvs(directory: Path, url: str) -> list:
    splits = {
        "train": [
            f"1\t{url}/good.jpg\ta man 's dog , running on the beach .\tEin Mann läuft mit seinem Hund am Strand.",
            f"2\t{url}/missing.jpg\ta dead link .\tEin toter Link.",
            f"3\t{url}/broken.jpg\ta text file .\tEine Textdatei.",
            f"4\t{url}/redirect.png\tthe dog 's ball on the grass .\tDer Ball des Hundes auf dem Gras.",
            "5\tftp://example.org/5.jpg\tnot over http .\tNicht über HTTP.",
            "6\tthree columns only",
            f"7\t{url}/good.png\t\tLeere englische Beschriftung.",
            f"8\t{url}/flaky.png\ta man and his dog , walking .\tEin Mann und sein Hund gehen spazieren.",
        ],
        "valid": [
            f"10\t{url}/good.png\tthe man 's dog .\tDer Hund des Mannes.",
            f"11\t{url}/missing.jpg\tgone .\tWeg.",
            f"12\t{url}/huge.jpg\ta very large picture .\tEin sehr großes Bild.",
        ],
        "test": [
            f"20\t{url}/image-without-extension\ta dog on grass .\tEin Hund auf Gras.",
            f"21\t{url}/soft404.jpg\tan error page .\tEine Fehlerseite.",
        ],
    }
    directory.mkdir()
    paths = []
    for split, lines in splits.items():
        path = directory / f"cc-en-de.tsv.{split}"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


def test_download_filter_prepare(server, tmp_path, capsys):
    tsvs = write_tsvs(tmp_path / "cc", server.url)
    images = tmp_path / "images"
    # two processes downloading (and checking) shards of three ids
    quick = ["--processes", "2", "--threads", "4", "--shard-size", "3", "--timeout", "2", "--retries", "1",
             "--max-bytes", "10K"]  # fmt: skip
    summary = summary_of(capsys, "download", *tsvs, "--out", images, *quick)
    assert summary["malformed_lines"] == 3 and summary["ids"] == 10
    assert summary["downloaded"] == 5 and summary["failed"] == 5 and summary["unfinished"] == 0
    assert summary["failure_kinds"] == {"http 404": 2, "invalid_image": 2, "too_large": 1}
    assert sorted(p.name for p in images.glob("*.*g")) == ["1.jpg", "10.png", "20.png", "4.png", "8.png"]
    assert server.hits["/flaky.png"] == 2  # 500, then the image
    assert len(list((images / RECORDS_DIR / "run-0000").glob("*.images.parquet"))) == 4

    filtered = tmp_path / "filtered"
    result = summary_of(capsys, "filter", *tsvs, "--image-dir", images, "--out", filtered)
    lost = {split: s["lost"] for split, s in result["splits"].items()}
    assert lost == {"train": 5, "valid": 2, "test": 1}
    assert (filtered / "image_splits" / "train.txt").read_text().splitlines() == ["1.jpg", "4.png", "8.png"]
    dropped = {line.split("\t")[1]: line.split("\t")[2] for line in (filtered / "dropped.tsv").read_text().splitlines()}
    assert dropped["2"] == "no image (failed_to_download: HTTP Error 404: Not Found)"
    assert dropped["3"] == "no image (invalid_image: not an image Pillow reads (starts with b'this is a text f'))"
    assert dropped["12"].startswith("no image (too_large: ") and dropped["21"].startswith("no image (invalid_image: ")

    data = tmp_path / "data-bin"
    prepare = ["prepare", filtered, data, "--bpe-merges", "30", "--workers", "1"]
    assert summary_of(capsys, *prepare) == {"train": 3, "valid": 1, "test": 1}
    for split in ("train", "valid", "test"):
        assert (data / f"{split}.order").read_text() == (filtered / "image_splits" / f"{split}.txt").read_text()
        assert (data / f"{split}.en-de.en.idx").is_file()
    tok_en = (data / "tok" / "train.en").read_text().splitlines()
    tok_de = (data / "tok" / "train.de").read_text().splitlines()
    assert tok_en[0] == "a man 's dog , running on the beach ."  # not Moses-tokenised again
    assert tok_de[0] == "ein mann lauft mit seinem hund am strand ."  # Moses-tokenised
    assert json.loads((data / "prepare.json").read_text())["config"]["pretokenized"] == ["en"]
    assert vtlm_cc(*prepare) == 2  # the data-bin is there: refused without --force
    assert summary_of(capsys, *prepare, "--force") == {"train": 3, "valid": 1, "test": 1}

    # membership comes from the records: a file put there by hand for a
    # failed id does not count, a recorded image that is gone is named
    (images / "2.jpg").write_bytes((images / "1.jpg").read_bytes())
    (images / "4.png").unlink()
    again = tmp_path / "again"
    result = summary_of(capsys, "filter", tsvs[0], "--image-dir", images, "--out", again)
    assert (again / "image_splits" / "train.txt").read_text().splitlines() == ["1.jpg", "8.png"]
    dropped = {line.split("\t")[1]: line.split("\t")[2] for line in (again / "dropped.tsv").read_text().splitlines()}
    assert dropped["2"] == "no image (failed_to_download: HTTP Error 404: Not Found)"
    assert dropped["4"] == "no image (downloaded as 4.png, which is gone)"
    # without records, every image file counts
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("1.jpg", "2.jpg", "8.png"):
        (plain / name).write_bytes((images / name).read_bytes())
    summary_of(capsys, "filter", tsvs[0], "--image-dir", plain, "--out", tmp_path / "from-files")
    kept = (tmp_path / "from-files" / "image_splits" / "train.txt").read_text().splitlines()
    assert kept == ["1.jpg", "2.jpg", "8.png"]


def test_strict_download_stops_before_fetching(server, tmp_path, caplog):
    tsvs = write_tsvs(tmp_path / "cc", server.url)
    assert vtlm_cc("download", *tsvs, "--out", tmp_path / "images", "--strict") == 2
    assert "cc-en-de.tsv.train:5: bad URL 'ftp://example.org/5.jpg'" in caplog.text
    assert sum(server.hits.values()) == 0


def test_download_without_img2dataset_is_one_line(tmp_path, monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img2dataset" else real(name, *a))
    tsv = tmp_path / "cc.tsv.train"
    tsv.write_text("1\thttp://127.0.0.1:9/1.jpg\ta dog .\tEin Hund.\n", encoding="utf-8")
    assert vtlm_cc("download", tsv, "--out", tmp_path / "images") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["img2dataset is not installed; vtlm-cc download needs it: pip install -e '.[download]'"]


def test_filter_needs_images_and_features_filter_alone(tmp_path, caplog, capsys):
    tsvs = write_tsvs(tmp_path / "cc", "http://example.org")
    assert vtlm_cc("filter", *tsvs, "--out", tmp_path / "out") == 2
    assert "give --image-dir, --features or both" in caplog.text

    make_store(tmp_path / "f.h5", ["1.jpg", "20.png", "99.jpg"])
    result = summary_of(capsys, "filter", *tsvs, "--features", tmp_path / "f.h5", "--out", tmp_path / "out")
    assert {s: v["kept"] for s, v in result["splits"].items()} == {"train": 1, "valid": 0, "test": 1}
    assert (tmp_path / "out" / "images.txt").read_text().splitlines() == ["1.jpg", "20.png"]


def test_prepare_needs_filter_output(tmp_path, caplog):
    assert vtlm_cc("prepare", tmp_path, tmp_path / "bin") == 2
    assert "run 'vtlm-cc filter' first" in caplog.text


def test_size_arguments():
    assert cc.parse_size("16M") == 16 * 1024**2 and cc.parse_size("500k") == 500 * 1024
    assert cc.parse_size("1000") == 1000 and cc.parse_size("1.5KB") == 1536
    for text in ("big", "-5", "0", "infK", "nanM", "1e9"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
            cc.parse_size(text)
    default = cc.DownloadConfig(out_dir="").max_bytes
    assert cc.parse_size(cc.format_size(default)) == default


# -- bad input: one line, exit status 2, whatever the mistake -----------------

@pytest.fixture
def workspace(tmp_path):
    """What a new user has around: a good TSV, an empty one, a CSV, a file, a
    folder, an HDF5 file that is no store, a non-HDF5 '.h5', a filter output
    whose train split kept nothing, and a good one."""
    w = tmp_path
    (w / "cc.tsv.train").write_text("1\thttp://127.0.0.1:9/1.jpg\ta dog .\tEin Hund.\n", encoding="utf-8")
    (w / "empty.tsv").write_bytes(b"")
    (w / "captions.csv").write_text("id,url,en,de\n1,http://a.org/1.jpg,a dog,ein Hund\n")
    (w / "file").write_text("not a folder\n")
    (w / "folder").mkdir()
    (w / "images").mkdir()
    (w / "not-hdf5.h5").write_bytes(b"text, not HDF5\n")
    import h5py

    with h5py.File(w / "other.h5", "w") as f:
        f["x"] = [1, 2]
    filter_splits({"train": w / "cc.tsv.train"}, w / "kept-nothing", images={})
    filter_splits({"train": w / "cc.tsv.train"}, w / "filtered", images={"1": "1.jpg"})
    return w


BAD_INPUT = [
    # (arguments, with {w} the workspace; what the one line says)
    ("download {w}/missing.tsv --out {w}/o", "{w}/missing.tsv: no such file"),
    ("download {w}/folder --out {w}/o", "{w}/folder: is a folder, not a caption TSV"),
    ("download {w}/empty.tsv --out {w}/o", "{w}/empty.tsv: empty file"),
    ("download {w}/captions.csv --out {w}/o", "no usable line in 2; the first: {w}/captions.csv:1: expected 4 tab"),
    ("download {w}/cc.tsv.train --out {w}/o --max-bytes -5", "argument --max-bytes: not a size of at least 1 byte"),
    ("download {w}/cc.tsv.train --out {w}/o --max-bytes big", "argument --max-bytes: not a size"),
    ("download {w}/cc.tsv.train --out {w}/o --processes 0", "argument --processes: must be an integer of at least 1"),
    ("download {w}/cc.tsv.train --out {w}/o --threads -3", "argument --threads: must be an integer of at least 1"),
    ("download {w}/cc.tsv.train --out {w}/o --shard-size 0", "argument --shard-size: must be an integer of at least 1"),
    ("download {w}/cc.tsv.train --out {w}/o --distributor spark", "argument --distributor: invalid choice: 'spark'"),
    ("download {w}/cc.tsv.train --out {w}/o --distributor ray", "--distributor ray: ray is not installed"),
    ("download {w}/cc.tsv.train --out {w}/o --formats bmp", "argument --formats: invalid choice: 'bmp'"),
    ("download {w}/cc.tsv.train --out {w}/o --workers 8", "unrecognized arguments: --workers 8"),
    ("download {w}/cc.tsv.train --out {w}/o --timeout -1", "argument --timeout: must be a number above 0"),
    ("download {w}/cc.tsv.train --out {w}/o --timeout 0", "argument --timeout: must be a number above 0"),
    ("download {w}/cc.tsv.train --out {w}/o --retries -1", "argument --retries: must be an integer of at least 0"),
    ("download {w}/cc.tsv.train --out {w}/file", "{w}/file: is a file, not a folder"),
    ("download {w}/cc.tsv.train --out {w}/file/sub", "{w}/file/sub: cannot be created as a folder"),
    ("download {w}/cc.tsv.train", "the following arguments are required: --out"),
    ("download a/b={w}/cc.tsv.train --out {w}/o", "split name 'a/b' is not letters"),
    ("filter --out {w}/f --image-dir {w}/images", "the following arguments are required: TSV"),
    ("filter {w}/cc.tsv.train --out {w}/f", "give --image-dir, --features or both"),
    ("filter {w}/cc.tsv.train {w}/missing.tsv --out {w}/f --image-dir {w}/images", "missing.tsv: no such file"),
    ("filter {w}/cc.tsv.train --out {w}/f --image-dir {w}/missing", "{w}/missing: no such folder (--image-dir)"),
    ("filter {w}/cc.tsv.train --out {w}/f --image-dir {w}/file", "{w}/file: not a folder (--image-dir)"),
    ("filter {w}/cc.tsv.train --out {w}/f --features {w}/missing.h5", "{w}/missing.h5: no such feature store"),
    ("filter {w}/cc.tsv.train --out {w}/f --features {w}/folder", "{w}/folder: a folder without feature stores (*.h5)"),
    ("filter {w}/cc.tsv.train --out {w}/f --features {w}/not-hdf5.h5", "{w}/not-hdf5.h5: cannot be read as HDF5"),
    ("filter {w}/cc.tsv.train --out {w}/f --features {w}/other.h5", "{w}/other.h5: not a region-feature store"),
    ("filter {w}/cc.tsv.train --out {w}/file --image-dir {w}/images", "{w}/file: is a file, not a folder"),
    ("filter {w}/cc.tsv.train --out {w}/filtered --image-dir {w}/images", "already holds filtered splits; use --force"),
    ("prepare {w}/folder {w}/bin", "{w}/folder: not an output of 'vtlm-cc filter'"),
    ("prepare {w}/missing {w}/bin", "{w}/missing: no such folder"),
    ("prepare {w}/file {w}/bin", "{w}/file: not a folder"),
    ("prepare {w}/kept-nothing {w}/bin", "split 'train' kept no pairs (see {w}/kept-nothing/dropped.tsv)"),
    ("prepare {w}/filtered {w}/file", "{w}/file: is a file, not a folder"),
    ("prepare {w}/filtered {w}/file/bin", "{w}/file/bin: cannot be created as a folder"),
    ("prepare {w}/filtered {w}/bin --workers 0", "argument --workers: must be an integer of at least 1"),
    ("prepare {w}/filtered {w}/bin --bpe-merges 0", "argument --bpe-merges: must be an integer of at least 1"),
    ("prepare {w}/filtered {w}/bin --bpe-codes {w}/missing.codes", "{w}/missing.codes: no such file"),
    ("prepare {w}/filtered {w}/bin --dictionary {w}/folder", "{w}/folder: "),
    ("prepare {w}/filtered {w}/bin --pretokenized fr", "pretokenized languages ['fr'] must be en or de"),
    ("unknown", "invalid choice: 'unknown'"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[a.replace("{w}/", "") for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_status_2(workspace, caplog, capsys, argv, message):
    caplog.clear()
    status = vtlm_cc(*argv.format(w=workspace).split())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert status == 2 and len(errors) == 1, errors
    assert message.format(w=workspace) in errors[0] and "\n" not in errors[0]
    assert capsys.readouterr().out == ""


def test_an_unreadable_folder_is_one_line(workspace, monkeypatch, caplog):
    """chmod does not stop root, so the listing itself fails here."""
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == workspace / "images":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert vtlm_cc("filter", workspace / "cc.tsv.train", "--image-dir", workspace / "images", "--out", workspace / "f") == 2
    assert vtlm_cc("download", workspace / "cc.tsv.train", "--out", workspace / "images") == 2
    assert caplog.text.count(f"{workspace / 'images'}: cannot be read as a folder (Permission denied)") == 2


# -- Ctrl-C --------------------------------------------------------------------

def test_ctrl_c_during_download_is_one_line_and_a_rerun_continues(server, tmp_path, capsys):
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it)
    while slow downloads run: exit 130 with one line and no traceback, soon
    (img2dataset is stopped; the checkers finish their shard), the shards
    done so far checked and recorded, nothing half done left behind; a
    rerun fetches the rest."""
    fast = {"1": "/good.jpg", "2": "/good.png", "3": "/missing.jpg", "4": "/animation.gif"}
    slow = [str(k) for k in range(5, 9)]
    tsv = tmp_path / "cc.tsv.train"
    lines = [f"{i}\t{server.url}{path}\ta photo .\tEin Foto." for i, path in fast.items()]
    lines += [f"{i}\t{server.url}/slow.jpg\ta slow photo .\tEin langsames Foto." for i in slow]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "images"
    run = out / RECORDS_DIR / "run-0000"
    # a slow request is held for longer than the download timeout, far longer
    # than a prompt stop takes even on a loaded machine: a run that waited
    # for its slow downloads would take over 90 s
    options = ["--out", str(out), "--processes", "2", "--threads", "1", "--shard-size", "1", "--timeout", "100"]
    slow_route = server.routes["/slow.jpg"]
    good_jpg = server.routes["/good.jpg"]
    server.routes["/slow.jpg"] = lambda h: (server.stop.wait(120), good_jpg(h))
    # as a terminal's foreground job: Ctrl-C handled, even where the suite
    # itself runs with SIGINT ignored (a background job of a shell script)
    proc = subprocess.Popen([VTLM_CC, "download", str(tsv), *options], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # the plugin's import takes seconds on a loaded machine
        # the fast ids come first: once they are recorded and a slow one
        # runs, the interrupt finds work done and work running
        while not (server.hits["/slow.jpg"] and len(list(run.glob("*.images.parquet"))) == len(fast)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        server.routes["/slow.jpg"] = slow_route
    waited = time.monotonic() - interrupted
    assert waited < 45, f"the interrupt waited {waited:.0f} s for the slow downloads; its stderr:\n{stderr[-3000:]}"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (Ctrl-C)" in stderr.strip().splitlines()[-1]
    assert stdout == ""  # no summary for an interrupted run
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["1.jpg", "2.png", "4.gif"]
    assert not [p for p in run.iterdir() if p.is_dir()]  # the slow shards' folders are gone
    assert server.hits["/slow.jpg"] <= len(slow)

    server.routes["/slow.jpg"] = server.routes["/good.jpg"]
    again = summary_of(capsys, "download", tsv, *options)
    assert again["downloaded"] == len(slow) and again["already_present"] == 3 and again["skipped_failed_before"] == 1
    assert {f"{i}.jpg" for i in slow} <= {p.name for p in out.iterdir()}

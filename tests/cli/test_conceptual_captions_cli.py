"""vtlm-cc end to end: TSVs with dead, broken and malformed entries in every
split -> downloaded images -> filtered splits -> a data-bin."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vtlm_fairseq.cli import conceptual_captions as cc
from vtlm_fairseq.data.image_download import failure_kind


def printed_json(capsys) -> dict:
    """The JSON object a command prints last (log lines may come before it)."""
    lines = capsys.readouterr().out.splitlines()
    start = max(k for k, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


@pytest.mark.parametrize("argv", [["--help"], ["download", "--help"], ["filter", "--help"], ["prepare", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cc.cli_main(argv)
    assert e.value.code == 0
    assert "vtlm-cc" in capsys.readouterr().out


def test_console_entry_point_is_installed():
    exe = Path(sys.executable).parent / "vtlm-cc"
    assert exe.exists(), f"{exe} missing: install the package with pip install -e ."
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
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
    quick = ["--timeout", "1", "--retries", "1", "--backoff", "0.01", "--max-bytes", "4K", "--no-progress"]
    cc.cli_main(["download", *tsvs, "--out", str(images), *quick])
    summary = printed_json(capsys)
    assert summary["malformed_lines"] == 3
    assert summary["downloaded"] == 5 and summary["failed"] == 5
    assert sorted(p.name for p in images.glob("*.*g")) == ["1.jpg", "10.png", "20.png", "4.png", "8.png"]
    report = [json.loads(line) for line in (images / "download_failures.jsonl").read_text().splitlines()]
    assert {r["id"]: failure_kind(r["reason"]) for r in report} == {
        "2": "http 404", "3": "not an image", "11": "http 404", "12": "too large", "21": "not an image",
    }

    hits = dict(server.hits)
    cc.cli_main(["download", *tsvs, "--out", str(images), *quick])
    again = printed_json(capsys)
    assert again["downloaded"] == 0 and again["already_present"] == 5 and again["skipped_failed_before"] == 5
    assert dict(server.hits) == hits

    filtered = tmp_path / "filtered"
    cc.cli_main(["filter", *tsvs, "--image-dir", str(images), "--out", str(filtered)])
    result = printed_json(capsys)
    lost = {split: s["lost"] for split, s in result["splits"].items()}
    assert lost == {"train": 5, "valid": 2, "test": 1}
    assert (filtered / "image_splits" / "train.txt").read_text().splitlines() == ["1.jpg", "4.png", "8.png"]

    data = tmp_path / "data-bin"
    cc.cli_main(["prepare", str(filtered), str(data), "--bpe-merges", "30", "--workers", "1"])
    assert printed_json(capsys) == {"train": 3, "valid": 1, "test": 1}
    for split in ("train", "valid", "test"):
        assert (data / f"{split}.order").read_text() == (filtered / "image_splits" / f"{split}.txt").read_text()
        assert (data / f"{split}.en-de.en.idx").is_file()
    tok_en = (data / "tok" / "train.en").read_text().splitlines()
    tok_de = (data / "tok" / "train.de").read_text().splitlines()
    assert tok_en[0] == "a man 's dog , running on the beach ."  # not Moses-tokenised again
    assert tok_de[0] == "ein mann lauft mit seinem hund am strand ."  # Moses-tokenised
    assert json.loads((data / "prepare.json").read_text())["config"]["pretokenized"] == ["en"]


def test_strict_download_stops_before_fetching(server, tmp_path, caplog):
    tsvs = write_tsvs(tmp_path / "cc", server.url)
    with pytest.raises(SystemExit) as e:
        cc.cli_main(["download", *tsvs, "--out", str(tmp_path / "images"), "--strict", "--no-progress"])
    assert e.value.code == 1
    assert "cc-en-de.tsv.train:5: bad URL 'ftp://example.org/5.jpg'" in caplog.text
    assert sum(server.hits.values()) == 0


def test_filter_needs_images_and_features_filter_alone(tmp_path, caplog, capsys):
    from tests.data.test_conceptual_captions import make_store

    tsvs = write_tsvs(tmp_path / "cc", "http://example.org")
    with pytest.raises(SystemExit) as e:
        cc.cli_main(["filter", *tsvs, "--out", str(tmp_path / "out")])
    assert e.value.code == 1 and "give --image-dir, --features or both" in caplog.text

    make_store(tmp_path / "f.h5", ["1.jpg", "20.png", "99.jpg"])
    cc.cli_main(["filter", *tsvs, "--features", str(tmp_path / "f.h5"), "--out", str(tmp_path / "out")])
    result = printed_json(capsys)
    assert {s: v["kept"] for s, v in result["splits"].items()} == {"train": 1, "valid": 0, "test": 1}
    assert (tmp_path / "out" / "images.txt").read_text().splitlines() == ["1.jpg", "20.png"]


def test_prepare_needs_filter_output(tmp_path, caplog):
    with pytest.raises(SystemExit) as e:
        cc.cli_main(["prepare", str(tmp_path), str(tmp_path / "bin")])
    assert e.value.code == 1 and "run 'vtlm-cc filter' first" in caplog.text


def test_size_arguments():
    assert cc.parse_size("16M") == 16 * 1024**2 and cc.parse_size("500k") == 500 * 1024
    assert cc.parse_size("1000") == 1000
    with pytest.raises(Exception, match="not a size"):
        cc.parse_size("big")


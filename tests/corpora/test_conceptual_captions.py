"""Reading Conceptual Captions TSVs and filtering their splits to the pairs
with an image (and features), line-aligned."""

import gzip
import json
import re

import numpy as np
import pytest

from tests.data.store_helpers import random_regions
from vtlm_fairseq.corpora.conceptual_captions import (
    CaptionPair,
    CaptionTsvReader,
    TsvProblem,
    filter_splits,
    parse_split_args,
    split_name_of,
)
from vtlm_fairseq.text.corpus import CorpusError
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter
from vtlm_fairseq.text.preparation import PrepareConfig, normalize_pretokenized_lines, prepare


def row(image_id, url=None, en=None, de=None) -> str:
    """A TSV line whose captions name the id, so alignment can be checked."""
    url = url or f"http://images.example.org/{image_id}.jpg"
    en = f"a photo of item {image_id} ." if en is None else en
    de = f"Ein Foto von Ding {image_id}." if de is None else de
    return f"{image_id}\t{url}\t{en}\t{de}"


# per split: the lines, and the ids whose image was downloaded
SPLITS = {
    "train": [
        row("1"),
        row("2"),  # no image
        "3\thttp://images.example.org/3.jpg\tonly three columns",
        row("4", de="   "),  # empty German caption
        row("5", url="ftp://images.example.org/5.jpg"),  # not http(s)
        row("6"),
        "",
        row("../7"),  # cannot name a file
        row("8"),  # image, but no features
        row("9", url="not a url"),
    ],
    "valid": [
        row("10"),
        row("11"),  # no image
        row("1", url="http://elsewhere.example.org/x.jpg"),  # id 1 again, other URL
        row("1"),  # id 1 again, same URL: the same image
        row("12", en=""),
    ],
    "test": [
        row("13"),  # no image
        row("14"),
        row("15") + "\textra column",
        row("16", url="http://[::1"),
    ],
}
IMAGES = {"1": "1.jpg", "6": "6.png", "8": "8.jpg", "10": "10.gif", "14": "14.jpg", "99": "99.jpg"}
KEPT = {"train": ["1", "6", "8"], "valid": ["10", "1"], "test": ["14"]}
MALFORMED = {"train": 6, "valid": 2, "test": 2}


def write_tsvs(directory, splits=SPLITS, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, lines in splits.items():
        path = directory / (f"cc-en-de.tsv.{split}" + (".gz" if gz else ""))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if split == "train":  # one line that is not UTF-8
            data += b"17\thttp://images.example.org/17.jpg\tcaf\xe9\tCaf\xe9\n"
        if gz:
            with gzip.open(path, "wb") as f:
                f.write(data)
        else:
            path.write_bytes(data)
        paths[split] = str(path)
    return paths


def read_split(out, split):
    en = (out / "raw" / f"{split}.en").read_text(encoding="utf-8").splitlines()
    de = (out / "raw" / f"{split}.de").read_text(encoding="utf-8").splitlines()
    order = (out / "image_splits" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    return en, de, order


def assert_aligned(out, kept):
    for split, ids in kept.items():
        en, de, order = read_split(out, split)
        assert len(en) == len(de) == len(order) == len(ids), split
        for image_id, e, d, name in zip(ids, en, de, order):
            assert e == f"a photo of item {image_id} ."
            assert d == f"Ein Foto von Ding {image_id}."
            assert name == IMAGES[image_id]


def test_filter_keeps_lines_aligned_in_their_splits(tmp_path):
    tsvs = write_tsvs(tmp_path / "cc")
    out = tmp_path / "filtered"
    result = filter_splits(tsvs, out, IMAGES)
    assert_aligned(out, KEPT)
    for split, stats in result.splits.items():
        lines = len(SPLITS[split]) + (split == "train")
        assert stats.lines == lines
        assert stats.kept == len(KEPT[split])
        assert stats.malformed == MALFORMED[split] + (split == "train")
        assert stats.no_image == lines - stats.kept - stats.malformed
        assert stats.lost == lines - stats.kept
    report = json.loads((out / "filter_report.json").read_text())
    assert report["splits"]["train"]["lost"] == 8 and report["splits"]["test"]["no_image"] == 1
    # the extractor's list: every image once, in order of first use
    assert (out / "images.txt").read_text().splitlines() == ["1.jpg", "6.png", "8.jpg", "10.gif", "14.jpg"]
    dropped = (out / "dropped.tsv").read_text().splitlines()
    assert len(dropped) == sum(s.lost for s in result.splits.values())
    assert f"{tsvs['valid']}:2\t11\tno image" in dropped
    assert any(line.startswith(f"{tsvs['train']}:3\t\texpected 4 tab-separated columns") for line in dropped)
    assert not list(out.rglob("*.tmp"))


def test_dropped_lines_name_the_download_record(tmp_path):
    """With the download records' reasons, a line dropped for want of an
    image says why the image is missing."""
    tsvs = write_tsvs(tmp_path / "cc")
    reasons = {"2": "failed_to_download: HTTP Error 404: Not Found", "11": "invalid_image: not an image"}
    result = filter_splits(tsvs, tmp_path / "out", IMAGES, missing_reasons=reasons)
    assert_aligned(tmp_path / "out", KEPT)  # membership is the images mapping's, as without reasons
    dropped = (tmp_path / "out" / "dropped.tsv").read_text().splitlines()
    assert f"{tsvs['train']}:2\t2\tno image (failed_to_download: HTTP Error 404: Not Found)" in dropped
    assert f"{tsvs['valid']}:2\t11\tno image (invalid_image: not an image)" in dropped
    assert f"{tsvs['test']}:1\t13\tno image (not downloaded)" in dropped
    assert result.splits["valid"].no_image == 1


def make_store(path, names):
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(path, num_regions=4, feature_dim=8) as writer:
        for name in names:
            writer.add(name, random_regions(rng, 4, 8))
    return FeatureStore(path)


def test_filter_by_feature_store(tmp_path):
    tsvs = write_tsvs(tmp_path / "cc")
    store = make_store(tmp_path / "f.h5", ["1.jpg", "6.png", "10.gif", "14.jpg", "unrelated.jpg"])
    result = filter_splits(tsvs, tmp_path / "out", IMAGES, features=store)
    kept = {**KEPT, "train": ["1", "6"]}
    assert_aligned(tmp_path / "out", kept)
    assert result.splits["train"].no_features == 1
    dropped = (tmp_path / "out" / "dropped.tsv").read_text()
    assert "8.jpg not in the feature store" in dropped


def test_gzipped_tsvs_read_the_same(tmp_path):
    tsvs = write_tsvs(tmp_path / "cc", gz=True)
    assert list(parse_split_args(list(tsvs.values()))) == ["train", "valid", "test"]
    filter_splits(tsvs, tmp_path / "out", IMAGES)
    assert_aligned(tmp_path / "out", KEPT)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1\thttp://a.org/1.jpg\ten", "expected 4 tab-separated columns (id, url, English, German), found 3"),
        (b"1\thttp://a.org/1.jpg\ten\tde\tmore", "found 5"),
        (b"\thttp://a.org/1.jpg\ten\tde", "empty image id"),
        (b"a b\thttp://a.org/1.jpg\ten\tde", "image id 'a b' cannot name a file"),
        (b".hidden\thttp://a.org/1.jpg\ten\tde", "image id '.hidden' cannot name a file"),
        (b"1\thttps://\ten\tde", "bad URL 'https://': not http(s)://host/"),
        (b"1\tfile:///etc/passwd\ten\tde", "not http(s)://host/"),
        (b"1\thttp://a.org:99999/x\ten\tde", "bad URL 'http://a.org:99999/x'"),
        (b"1\thttp://a.org/a b.jpg\ten\tde", "contains whitespace"),
        (b"1\thttp://a.org/1.jpg\t \tde", "empty English caption"),
        (b"1\thttp://a.org/1.jpg\ten\t", "empty German caption"),
        (b"   ", "empty line"),
        (b"1\thttp://a.org/1.jpg\t\xc3\x28\tde", "not valid UTF-8 (byte 21"),
    ],
)
def test_malformed_lines_are_named_by_file_and_line(tmp_path, line, reason):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"0\thttp://a.org/0.jpg\tgood\tgut\n" + line + b"\n2\thttp://a.org/2.jpg\tgood\tgut\n")
    items = list(CaptionTsvReader().read(path))
    assert [type(i) for i in items] == [CaptionPair, TsvProblem, CaptionPair]
    assert str(items[1]).startswith(f"{path}:2: ")
    assert reason in items[1].reason
    with pytest.raises(CorpusError, match=rf"x\.tsv:2: .*{re.escape(reason[:12])}"):
        list(CaptionTsvReader(strict=True).read(path))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "x.tsv: empty file; expected lines of id, url, English, German"),
        # the wrong file: no line has the TSV's layout
        (b"id,url,en,de\n1,http://a.org/1.jpg,a,b\n", "x.tsv: no usable line in 2; the first: {path}:1: expected 4"),
        (b"\n\n", "no usable line in 2; the first: {path}:1: empty line"),
    ],
    ids=["empty", "csv", "blank-lines"],
)
def test_a_tsv_without_any_pair_is_an_error(tmp_path, data, reason):
    path = tmp_path / "x.tsv"
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=re.escape(reason.format(path=path))):
        list(CaptionTsvReader().read(path))


def test_a_cut_gzip_tsv_names_the_line(tmp_path):
    whole = gzip.compress("".join(row(str(k)) + "\n" for k in range(2000)).encode())
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorpusError, match=r"cut\.tsv\.gz:\d+: cannot be read \(Compressed file ended"):
        list(CaptionTsvReader().read(path))


def test_a_folder_is_no_tsv(tmp_path):
    with pytest.raises(CorpusError, match="is a folder, not a caption TSV"):
        list(CaptionTsvReader().read(tmp_path))


def test_captions_become_single_lines(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("1\thttp://a.org/1.jpg\t a  man\u2028walks \r\tein\x0bMann \n", encoding="utf-8")
    (pair,) = CaptionTsvReader().read(path)
    assert (pair.en, pair.de, pair.source) == ("a man walks", "ein Mann", f"{path}:1")


def test_strict_filter_stops_and_leaves_no_half_split(tmp_path):
    tsvs = write_tsvs(tmp_path / "cc")
    with pytest.raises(CorpusError, match=r"cc-en-de\.tsv\.train:3: expected 4"):
        filter_splits(tsvs, tmp_path / "out", IMAGES, strict=True)
    assert not list((tmp_path / "out").rglob("*.en")) and not list((tmp_path / "out").rglob("*.tmp"))


def test_existing_output_needs_force_and_stale_splits_go(tmp_path):
    tsvs = write_tsvs(tmp_path / "cc")
    out = tmp_path / "out"
    filter_splits(tsvs, out, IMAGES)
    with pytest.raises(CorpusError, match="--force"):  # an InputError: one line, exit 2
        filter_splits(tsvs, out, IMAGES)
    filter_splits({"train": tsvs["train"]}, out, IMAGES, force=True)
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["train.de", "train.en"]
    assert_aligned(out, {"train": KEPT["train"]})


def test_missing_tsv_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="nope.tsv: no such file"):
        filter_splits({"train": str(tmp_path / "nope.tsv")}, tmp_path / "out", {})


def test_split_names(tmp_path):
    assert split_name_of("data/cc-en-de.tsv.train") == "train"
    assert split_name_of("cc-en-de.tsv.valid.gz") == "valid"
    assert split_name_of("test.tsv") == "test"
    assert parse_split_args(["a/cc.tsv.train", "dev=b/x.tsv"]) == {"train": "a/cc.tsv.train", "dev": "b/x.tsv"}
    with pytest.raises(CorpusError, match="split 'train' given twice"):
        parse_split_args(["a/cc.tsv.train", "b/cc.tsv.train"])
    # split names become file names in OUT/raw and in the data-bin
    for spec in ("../up=x.tsv", "a/b=x.tsv", "my data.tsv", "x.y.tsv"):
        with pytest.raises(CorpusError, match="is not letters, digits, '_' or '-'"):
            parse_split_args([spec])


def test_pretokenized_text_is_not_tokenised_again():
    lines = ["a man 's hat , and the dog .", "Caf\u00e9\u00a0\u201cNoir\u201d\tbar \u2028 now"]
    out = normalize_pretokenized_lines(("en", True, True, lines))
    # Moses would split "'s" into "' s"; only normalisation applies here
    assert out == ["a man 's hat , and the dog .", 'cafe "noir" bar now']
    assert normalize_pretokenized_lines(("en", False, False, ["Café"])) == ["Café"]


def test_pretokenized_languages_must_be_the_pair(tmp_path):
    with pytest.raises(CorpusError, match="pretokenized languages"):
        prepare(PrepareConfig(raw_dir=str(tmp_path), dest_dir=str(tmp_path / "bin"), pretokenized=["eng"]))

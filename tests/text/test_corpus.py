import gzip

import pytest

from vtlm_fairseq.text.corpus import (
    CorpusError,
    check_parallel,
    discover_splits,
    image_file_name,
    read_lines,
    read_order_file,
)


def write(path, data: bytes, gz=False):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzip(tmp_path, gz):
    path = write(tmp_path / "a.en", "one\nzwei übung\r\nthree\n".encode(), gz)
    assert read_lines(path) == ["one", "zwei übung", "three"]


def test_gzip_recognised_by_content_not_name(tmp_path):
    path = write(tmp_path / "a.en", b"x\ny\n", gz=True)
    assert read_lines(path) == ["x", "y"]


def test_undecodable_bytes_name_file_and_line(tmp_path):
    path = write(tmp_path / "a.de", b"gut\nschl\xe4ger\n")
    with pytest.raises(CorpusError, match=r"a\.de:2: not valid UTF-8"):
        read_lines(path)


@pytest.mark.parametrize("blank", [b"", b"   ", b"\t"])
def test_empty_line_names_file_and_line(tmp_path, blank):
    path = write(tmp_path / "a.en", b"one\ntwo\n" + blank + b"\nfour\n")
    with pytest.raises(CorpusError, match=r"a\.en:3: empty line"):
        read_lines(path)


def test_corrupt_gzip_and_missing_file(tmp_path):
    whole = gzip.compress(b"".join(b"line %d\n" % i for i in range(5000)))
    path = write(tmp_path / "a.en.gz", whole[: len(whole) // 2])
    with pytest.raises(CorpusError, match=r"a\.en\.gz: cannot be read"):
        read_lines(path)
    with pytest.raises(CorpusError, match="no such file"):
        read_lines(tmp_path / "nothing.en")


def test_line_count_mismatch_names_first_unmatched_line():
    with pytest.raises(CorpusError, match=r"x\.en:3: line has no counterpart in x\.de"):
        check_parallel({"x.en": ["a", "b", "c"], "x.de": ["a", "b"]})
    with pytest.raises(CorpusError, match=r"o\.txt:3: .* in x\.en"):
        check_parallel({"x.en": ["a", "b"], "x.de": ["a", "b"], "o.txt": ["1", "2", "3"]})
    check_parallel({"x.en": ["a"], "x.de": ["b"]})


def test_order_file_strips_coco_caption_ids(tmp_path):
    path = write(tmp_path / "o.txt", b"COCO_train2014_000000117071.jpg#367178\n1000092795.jpg\n")
    assert read_order_file(path) == ["COCO_train2014_000000117071.jpg", "1000092795.jpg"]
    assert image_file_name("a.jpg") == "a.jpg"


def test_order_file_rejects_whitespace_in_names(tmp_path):
    path = write(tmp_path / "o.txt", b"a.jpg\nb c.jpg\n")
    with pytest.raises(CorpusError, match=r"o\.txt:2: image name contains whitespace"):
        read_order_file(path)


def test_discover_splits(tmp_path):
    # one language gzipped and the other plain is fine
    for name in ["train.en.gz", "train.de.gz", "val.en", "val.de", "test.en.gz", "test.de", "notes.txt"]:
        write(tmp_path / name, b"x\n")
    (tmp_path / "sub.en").mkdir()  # folders are not text files
    assert discover_splits(tmp_path, "en", "de") == ["train", "test", "val"]


def test_split_with_one_language_only_names_the_missing_file(tmp_path):
    """It used to be dropped without a word."""
    for name in ["train.en", "train.de", "val.en"]:
        write(tmp_path / name, b"x\n")
    with pytest.raises(CorpusError, match=r"val\.de: no such file \(nor \.gz\), but .*val\.en is there"):
        discover_splits(tmp_path, "en", "de")


def test_plain_and_gzip_of_one_file_is_ambiguous(tmp_path):
    for name in ["train.en", "train.en.gz", "train.de"]:
        write(tmp_path / name, b"x\n", gz=name.endswith(".gz"))
    with pytest.raises(CorpusError, match=r"train\.en: train\.en\.gz is there too"):
        discover_splits(tmp_path, "en", "de")


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("x")], ids=["missing", "a file"])
def test_raw_dir_must_be_a_folder(tmp_path, make):
    make(tmp_path / "raw")
    with pytest.raises(CorpusError, match=r"raw: (no such folder|not a folder)"):
        discover_splits(tmp_path / "raw", "en", "de")

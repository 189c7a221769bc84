import gzip
import json

import pytest

from tests.conftest import shared_path
from vtlm_fairseq.text.corpus import CorpusError
from vtlm_fairseq.text.preparation import PrepareConfig, prepare
from vtlm_fairseq.toy_world import ToyWorldConfig, build_toy_world

SMALL_WORLD = ToyWorldConfig(
    train_pairs=300, valid_pairs=30, test_pairs=20, num_regions=12, feature_dim=8
)


def load_split(data_dir, split, src="en", tgt="de"):
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data_dir / f"dict.{src}.txt"))
    return {
        lang: data_utils.load_indexed_dataset(
            str(data_dir / f"{split}.{src}-{tgt}.{lang}"), dictionary
        )
        for lang in (src, tgt)
    }, dictionary


@pytest.fixture(scope="module")
def toy_prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    build_toy_world(root / "world", SMALL_WORLD)
    cfg = PrepareConfig(
        raw_dir=str(root / "world" / "raw"),
        dest_dir=str(root / "bin"),
        image_splits_dir=str(root / "world" / "image_splits"),
        bpe_merges=200,
        workers=2,
    )
    return root, prepare(cfg)


def test_toy_world_runs_through_the_real_pipeline(toy_prepared):
    root, manifest = toy_prepared
    data = root / "bin"
    assert set(manifest["splits"]) == {"train", "valid", "test"}
    assert (data / "dict.en.txt").read_text() == (data / "dict.de.txt").read_text()
    for split, pairs in [("train", 300), ("valid", 30), ("test", 20)]:
        datasets, dictionary = load_split(data, split)
        assert len(datasets["en"]) == len(datasets["de"]) == pairs
        order = (data / f"{split}.order").read_text().splitlines()
        raw_order = (root / "world" / "image_splits" / f"{split}.txt").read_text().splitlines()
        assert order == raw_order
        # binarised text is the BPE'd, tokenised, lowercased raw text
        bpe = (data / "bpe" / f"{split}.de").read_text().splitlines()
        assert dictionary.string(datasets["de"][0]) == bpe[0]
    raw_de = (root / "world" / "raw" / "train.de").read_text().splitlines()
    tok_de = (data / "tok" / "train.de").read_text().splitlines()
    assert tok_de[0] == raw_de[0].lower().replace(".", " .").replace("ä", "a").replace(
        "ü", "u"
    ).replace("ö", "o")


def test_existing_output_needs_force(toy_prepared):
    root, manifest = toy_prepared
    cfg = PrepareConfig(**{**manifest["config"], "force": False})
    with pytest.raises(CorpusError, match="--force"):
        prepare(cfg)


def make_corpus(tmp_path, en, de, order=None, gz=False):
    raw = tmp_path / "raw"
    raw.mkdir()
    for lang, content in (("en", en), ("de", de)):
        path = raw / (f"train.{lang}" + (".gz" if gz else ""))
        if gz:
            with gzip.open(path, "wb") as f:
                f.write(content)
        else:
            path.write_bytes(content)
    images = None
    if order is not None:
        images = tmp_path / "images"
        images.mkdir()
        (images / "train.txt").write_bytes(order)
    return PrepareConfig(
        raw_dir=str(raw),
        dest_dir=str(tmp_path / "bin"),
        image_splits_dir=str(images) if images else None,
        workers=1,
    )


@pytest.mark.parametrize(
    "en, de, order, message",
    [
        (b"a\nb\nc\n", b"x\ny\n", None, r"train\.en(\.gz)?:3: line has no counterpart in .*train\.de"),
        (b"a\nb\n", b"x\ny\n", b"1.jpg\n", r"train\.en(\.gz)?:2: line has no counterpart in .*train\.txt"),
        (b"a\n\nc\n", b"x\ny\nz\n", None, r"train\.en(\.gz)?:2: empty line"),
        (b"a\nb\n", b"x\n\xff\xfe\n", None, r"train\.de(\.gz)?:2: not valid UTF-8"),
        (b"a\nb\n", b"x\ny\n", b"1.jpg\n\n", r"train\.txt:2: empty line"),
        (b"a\n\x07\n", b"x\ny\n", None, r"train\.en(\.gz)?:2: nothing left after tokenisation"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_bad_input_names_file_and_line(tmp_path, en, de, order, message, gz):
    cfg = make_corpus(tmp_path, en, de, order, gz)
    with pytest.raises(CorpusError, match=message):
        prepare(cfg)
    assert not (tmp_path / "bin" / "dict.en.txt").exists()


def test_missing_image_list_and_missing_train(tmp_path):
    cfg = make_corpus(tmp_path, b"a\n", b"b\n", order=b"1.jpg\n")
    (tmp_path / "raw" / "val.en").write_bytes(b"a\n")
    (tmp_path / "raw" / "val.de").write_bytes(b"b\n")
    with pytest.raises(CorpusError, match=r"val\.txt: no image list for split val"):
        prepare(cfg)
    cfg.splits = ["valid=val"]
    with pytest.raises(CorpusError, match="no 'train' split"):
        prepare(cfg)


def test_multi30k_all_splits_in_one_folder(tmp_path):
    """The real Multi30k text: every split usable by name, COCO ids handled."""
    raw = shared_path("data", "multi30k", "raw")
    images = shared_path("data", "multi30k", "image_splits")
    manifest = prepare(
        PrepareConfig(
            raw_dir=str(raw), dest_dir=str(tmp_path), image_splits_dir=str(images),
            bpe_merges=2000, workers=2,
        )
    )  # fmt: skip
    # Counts come from the data; the names are the six Multi30k Task 1 splits
    # (train, val and the four test sets up to test_2018_flickr).
    expected = {}
    for path in sorted(raw.glob("*.en.gz")):
        raw_split = path.name[: -len(".en.gz")]
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            expected["valid" if raw_split == "val" else raw_split] = sum(1 for _ in lines)
    assert set(expected) >= {
        "train", "valid", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
        "test_2018_flickr",
    }  # fmt: skip
    assert {k: v["pairs"] for k, v in manifest["splits"].items()} == expected
    for split, n in expected.items():
        datasets, _ = load_split(tmp_path, split)
        assert len(datasets["en"]) == len(datasets["de"]) == n
        order = (tmp_path / f"{split}.order").read_text().splitlines()
        assert len(order) == n and all("#" not in name for name in order)
    coco = (tmp_path / "test_2017_mscoco.order").read_text().splitlines()
    assert coco[0] == "COCO_train2014_000000117071.jpg"
    assert json.loads((tmp_path / "prepare.json").read_text())["config"]["lowercase"]
    # the paper's normalisation: lowercased, accents stripped
    tok = (tmp_path / "tok" / "valid.de").read_text()
    assert tok == tok.lower() and "ä" not in tok and "ü" not in tok


def test_split_with_one_language_missing_stops_naming_the_file(tmp_path):
    """val.en without val.de used to drop the split without a word."""
    cfg = make_corpus(tmp_path, b"a b\n", b"x y\n")
    (tmp_path / "raw" / "val.en").write_bytes(b"a\n")
    with pytest.raises(CorpusError, match=r"raw/val\.de: no such file .*/val\.en is there"):
        prepare(cfg)
    assert not (tmp_path / "bin").exists()


def write_file(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(bpe_merges=0), r"--bpe-merges 0: at least 1"),
        (dict(bpe_merges=-5), r"--bpe-merges -5: at least 1"),
        (dict(workers=0), r"--workers 0: at least 1"),
        (dict(src="en", tgt="en"), r"--src and --tgt are both 'en'"),
        (dict(tgt="d/e"), r"--tgt 'd/e': a language code"),
        (dict(splits=["train", "a,b=train"]), r"--splits 'a,b=train': expected NAME"),
        (dict(splits=["train", "test=nowhere"]), r"raw/nowhere\.en: no such file \(nor \.gz\) for split test"),
        (dict(image_splits_dir="{tmp}/no_images"), r"no_images: no such folder \(--image-splits\)"),
        (dict(bpe_codes="{tmp}/none.codes"), r"none\.codes: no such file \(BPE codes\)"),
        (dict(bpe_codes=b"a b\nc\n"), r"codes:2: not a subword-nmt merge"),
        (dict(bpe_codes=b"a b 10\nc d x\n"), r"codes:2: not a fastBPE merge"),
        (dict(bpe_codes=b"#version: 0.2\n"), r"codes: no BPE merges in it"),
        (dict(bpe_codes=b""), r"codes: no BPE merges in it"),
        (dict(bpe_codes=b"#version: 9\na b\n"), r"codes:1: not a subword-nmt codes version"),
        (dict(dictionary="{tmp}/none.txt"), r"none\.txt: no such dictionary file"),
        (dict(dictionary=b"a 3\nb three\n"), r"dict:2: not a dictionary line"),
        (dict(dictionary=b"a 3\nb 2\na 1\n"), r"dict:3: 'a' is there already \(line 1\)"),
        (dict(dictionary=b"a 3\n<unk> 2\n"), r"dict:2: '<unk>' is there already \(fairseq adds it itself\)"),
        (dict(dictionary=b"a 3\n\nb 1\n"), r"dict:2: empty line"),
        (dict(dictionary=b""), r"dict: empty dictionary"),
        (dict(dest_dir=b"a file"), r"dest: not a folder"),
        (dict(dest_dir="{tmp}/raw"), r"the output folder is the input folder \(raw_dir\)"),
    ],
)
def test_bad_options_stop_before_anything_is_written(tmp_path, options, message):
    cfg = make_corpus(tmp_path, b"a b\nc d\n", b"x y\nz w\n")
    for key, value in options.items():
        if isinstance(value, bytes):  # file content: write it
            value = write_file(tmp_path, {"bpe_codes": "codes", "dictionary": "dict", "dest_dir": "dest"}[key], value)
        elif isinstance(value, str):
            value = value.format(tmp=tmp_path)
        setattr(cfg, key, value)
    with pytest.raises(CorpusError, match=message):
        prepare(cfg)
    assert not (tmp_path / "bin").exists()


def test_empty_raw_file_is_an_error(tmp_path):
    cfg = make_corpus(tmp_path, b"a b\n", b"x y\n")
    (tmp_path / "raw" / "val.en").write_bytes(b"")
    (tmp_path / "raw" / "val.de").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"val\.en: empty file \(split valid\)"):
        prepare(cfg)


def test_text_without_a_repeated_pair_is_an_error_not_a_hang(tmp_path):
    """subword-nmt learns no merge from it, and its BPE reader exits the
    process on empty codes: in a worker of the pool the run hung."""
    cfg = make_corpus(tmp_path, b"ab cd\n", b"xy zw\n")
    with pytest.raises(CorpusError, match=r"tok/train\.en and .*tok/train\.de: no pair of symbols occurs twice"):
        prepare(cfg)


def test_gzip_in_one_language_plain_in_the_other_and_force_keeps_other_files(tmp_path):
    en = [f"a man holds a bat number {i} ." for i in range(20)]
    de = [f"ein mann hält einen schläger nummer {i} ." for i in range(20)]
    cfg = make_corpus(tmp_path, "\n".join(en).encode(), "\n".join(de).encode())
    with gzip.open(tmp_path / "raw" / "val.en.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(en[:3]) + "\n")
    (tmp_path / "raw" / "val.de").write_text("\n".join(de[:3]) + "\n", encoding="utf-8")
    cfg.bpe_merges = 20
    manifest = prepare(cfg)
    assert manifest["splits"]["valid"]["pairs"] == 3
    data = tmp_path / "bin"
    (data / "notes.txt").write_text("mine")
    # bad input with --force: the old data-bin stays as it was
    (tmp_path / "raw" / "val.de").write_bytes(b"x\n")
    cfg.force = True
    with pytest.raises(CorpusError, match="no counterpart"):
        prepare(cfg)
    assert (data / "valid.en-de.en.bin").exists() and (data / "dict.en.txt").exists()
    # a rebuild removes what the run wrote, and only that
    (data / "old_split.en-de.en.bin").write_bytes(b"")
    (tmp_path / "raw" / "val.en.gz").unlink()
    (tmp_path / "raw" / "val.de").unlink()
    prepare(cfg)
    assert not (data / "valid.en-de.en.bin").exists() and not (data / "old_split.en-de.en.bin").exists()
    assert (data / "notes.txt").read_text() == "mine"


def _prepared_files(folder):
    """Every output of a data-bin but the run's own log and settings."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("prepare.json", "preprocess.log")}  # fmt: skip


def test_output_is_the_same_for_any_number_of_workers_and_chunks(toy_prepared, tmp_path):
    """Text streams through the worker pool in chunks; the data-bin is the
    one a single process writes, byte for byte."""
    root, _ = toy_prepared
    runs = {}
    for workers, chunk_lines in ((1, 100000), (3, 7)):
        dest = tmp_path / f"w{workers}"
        prepare(PrepareConfig(raw_dir=str(root / "world" / "raw"), dest_dir=str(dest),
                              image_splits_dir=str(root / "world" / "image_splits"), bpe_merges=200,
                              workers=workers, chunk_lines=chunk_lines))  # fmt: skip
        runs[workers] = _prepared_files(dest)
    assert runs[1].keys() == runs[3].keys() and "train.en-de.de.bin" in runs[1]
    for name, content in runs[1].items():
        assert runs[3][name] == content, name
    # and it is the module fixture's data-bin (workers 2, default chunks)
    assert _prepared_files(root / "bin") == runs[1]


def _synthetic_corpus(folder, pairs):
    import random

    rng = random.Random(pairs)
    words = [f"w{i}x{i % 7}" for i in range(300)]
    folder.mkdir()
    for lang in ("en", "de"):
        lines = (" ".join(rng.choices(words, k=12)) for _ in range(pairs))
        (folder / f"train.{lang}").write_text("".join(line + "\n" for line in lines))
    return folder


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """Nothing holds a corpus: the Python memory of a one-process run
    (tokenisation, BPE learned and applied, fairseq-preprocess) grows by
    less than 100 bytes per added sentence pair, where holding the text
    alone would take over 250 (two str objects of some 80 characters).
    What grows is fairseq-preprocess's index: each sentence's length, kept
    until the .idx file is written."""
    import tracemalloc

    peaks = {}
    for pairs in (2000, 8000):
        raw = _synthetic_corpus(tmp_path / f"raw{pairs}", pairs)
        tracemalloc.start()
        prepare(PrepareConfig(raw_dir=str(raw), dest_dir=str(tmp_path / f"bin{pairs}"), bpe_merges=100,
                              pretokenized=["en", "de"], workers=1, chunk_lines=500))  # fmt: skip
        peaks[pairs] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    text_per_pair = sum(p.stat().st_size for p in (tmp_path / "raw8000").iterdir()) / 8000
    assert text_per_pair > 150  # so that a held corpus would show
    assert (peaks[8000] - peaks[2000]) / 6000 < 100, peaks

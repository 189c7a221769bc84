import gzip
import json

import pytest

from tests.conftest import shared_path
from vtlm_fairseq.data.corpus import CorpusError
from vtlm_fairseq.data.preparation import PrepareConfig, prepare
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
    with pytest.raises(FileExistsError, match="--force"):
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

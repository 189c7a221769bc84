import hashlib
import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from vtlm_fairseq.data.feature_store import FeatureStore
from vtlm_fairseq.toy_world import ToyWorldConfig, build_toy_world
from vtlm_fairseq.toy_world.grammar import Mention, german_np
from vtlm_fairseq.toy_world.lexicon import ALL_NOUNS, AMBIGUOUS, COLOURS, OBJECTS, check_lexicon

CFG = ToyWorldConfig(
    train_pairs=3000, valid_pairs=200, test_pairs=200, num_regions=12, feature_dim=32
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, build_toy_world(out, CFG)


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".h5"):
        if path.name != "world.json":
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(tmp_path, world):
    out, manifest = world
    again = build_toy_world(tmp_path / "again", CFG)
    assert digest(out) == digest(tmp_path / "again")
    a, b = FeatureStore(out / "features.h5"), FeatureStore(tmp_path / "again" / "features.h5")
    assert a.names == b.names
    for name in a.names[::97]:
        np.testing.assert_array_equal(a.read(name).features, b.read(name).features)
    assert again["splits"] == manifest["splits"]
    build_toy_world(tmp_path / "other", ToyWorldConfig(**{**CFG.__dict__, "seed": 2}))
    assert digest(tmp_path / "other") != digest(out)


def test_sizes_alignment_and_store_coverage(world):
    out, manifest = world
    store = FeatureStore(out / "features.h5")
    for split in ("train", "valid", "test"):
        en, de = lines(out / "raw" / f"{split}.en"), lines(out / "raw" / f"{split}.de")
        order = lines(out / "image_splits" / f"{split}.txt")
        amb = lines(out / "ambiguity" / f"{split}.jsonl")
        assert len(en) == len(de) == len(order) == len(amb) == CFG.pairs(split)
        assert all(name in store for name in order)
        assert len(set(order)) == CFG.images(split)  # several captions per scene
    assert store.num_regions == 12 and store.feature_dim == 32


def test_default_store_size_is_near_250_mb():
    cfg = ToyWorldConfig()
    images = sum(cfg.images(s) for s in ("train", "valid", "test"))
    nbytes = images * cfg.num_regions * cfg.feature_dim * 2
    assert 200e6 < nbytes < 300e6


GENDER_ARTICLES = {
    # article -> (case, definite) options; the noun's gender must fit one
    "m": {"ein": "nom", "einen": "acc", "einem": "dat", "der": "nom", "den": "acc", "dem": "dat"},
    "f": {"eine": "nom/acc", "einer": "dat", "die": "nom/acc", "der": "dat"},
    "n": {"ein": "nom/acc", "einem": "dat", "das": "nom/acc", "dem": "dat"},
}
ADJ_ENDING = {  # (article, gender) -> adjective ending
    ("ein", "m"): "er", ("einen", "m"): "en", ("einem", "m"): "en",
    ("der", "m"): "e", ("den", "m"): "en", ("dem", "m"): "en",
    ("eine", "f"): "e", ("einer", "f"): "en", ("die", "f"): "e", ("der", "f"): "en",
    ("ein", "n"): "es", ("einem", "n"): "en", ("das", "n"): "e", ("dem", "n"): "en",
}  # fmt: skip


def test_german_agreement_across_the_corpus(world):
    """Every noun phrase: article fits the noun's gender, adjective ending fits
    article and gender (German strong/mixed/weak declension)."""
    out, _ = world
    gender = {n.de: n.gender for n in ALL_NOUNS}
    stems = {c.de for c in COLOURS}
    checked = 0
    for sentence in lines(out / "raw" / "train.de"):
        words = re.findall(r"\w+", sentence)
        for i, word in enumerate(words):
            if word not in gender or i == 0:
                continue
            g = gender[word]
            prev = words[i - 1]
            if prev[:-2] in stems or prev[:-1] in stems:  # adjective before noun
                article = words[i - 2].lower()
                ending = prev[len(next(s for s in stems if prev.startswith(s))):]
                assert ADJ_ENDING[(article, g)] == ending, sentence
            else:
                article = prev.lower()
            if article in ("bild", "boden"):
                continue
            assert article in GENDER_ARTICLES[g], (sentence, word)
            checked += 1
    assert checked > 3000


@pytest.mark.parametrize(
    "noun, case, definite, colour, expected",
    [
        ("Schläger", "nom", False, "rot", "ein roter Schläger"),
        ("Schläger", "acc", False, "rot", "einen roten Schläger"),
        ("Schläger", "dat", True, "rot", "dem roten Schläger"),
        ("Fledermaus", "nom", False, "rot", "eine rote Fledermaus"),
        ("Fledermaus", "dat", False, "weiß", "einer weißen Fledermaus"),
        ("Fledermaus", "acc", True, "blau", "die blaue Fledermaus"),
        ("Keyboard", "nom", False, "grün", "ein grünes Keyboard"),
        ("Keyboard", "acc", True, None, "das Keyboard"),
        ("Keyboard", "dat", False, "gelb", "einem gelben Keyboard"),
        ("Wecker", "nom", True, "schwarz", "der schwarze Wecker"),
        ("Wecker", "acc", True, "schwarz", "den schwarzen Wecker"),
    ],
)
def test_noun_phrase_forms(noun, case, definite, colour, expected):
    n = next(x for x in ALL_NOUNS if x.de == noun)
    c = next((x for x in COLOURS if x.de == colour), None)
    assert german_np(Mention(n, c), case, definite) == expected


def test_ambiguity_rate_and_text_cannot_decide(world):
    out, manifest = world
    en = lines(out / "raw" / "train.en")
    amb = [json.loads(x) for x in lines(out / "ambiguity" / "train.jsonl")]
    rate = sum(1 for a in amb if a) / len(amb)
    assert rate >= 0.2 and manifest["splits"]["train"]["ambiguous_rate"] == rate
    # A text-only translator at its best: learn on train the most frequent
    # German sense for each English sentence (else for each word), apply it to
    # the held-out scenes of valid and test. It stays near chance (50%).
    by_sentence, by_word = defaultdict(Counter), defaultdict(Counter)
    for sentence, items in zip(en, amb):
        for item in items:
            by_sentence[(sentence, item["en"])][item["de"]] += 1
            by_word[item["en"]][item["de"]] += 1
    right = total = 0
    for split in ("valid", "test"):
        held_en = lines(out / "raw" / f"{split}.en")
        held_amb = [json.loads(x) for x in lines(out / "ambiguity" / f"{split}.jsonl")]
        for sentence, items in zip(held_en, held_amb):
            for item in items:
                counts = by_sentence.get((sentence, item["en"])) or by_word[item["en"]]
                right += counts.most_common(1)[0][0] == item["de"]
                total += 1
    print(f"text-only sense accuracy on held-out scenes: {right}/{total}")
    assert total > 100 and right / total < 0.65
    # and per ambiguous word, both senses are common
    assert set(by_word) == set(AMBIGUOUS)
    for word, counts in by_word.items():
        assert len(counts) == 2 and min(counts.values()) / sum(counts.values()) > 0.3


def test_annotation_matches_the_image(world):
    """The annotated sense is the class the image's regions show."""
    out, _ = world
    store = FeatureStore(out / "features.h5")
    class_of = {n.de: n.class_id for n in ALL_NOUNS}
    order = lines(out / "image_splits" / "valid.txt")
    amb = [json.loads(x) for x in lines(out / "ambiguity" / "valid.jsonl")]
    n = 0
    for name, items in zip(order, amb):
        classes = set(store.read(name).classes.tolist())
        for item in items:
            assert class_of[item["de"]] in classes
            assert all(class_of[alt] not in classes for alt in item["alternatives"])
            n += 1
    assert n > 50


def test_features_identify_their_class(world):
    """Region features = class prototype + colour + noise: nearest class mean
    recovers the class, so masked region classification is learnable."""
    out, _ = world
    store = FeatureStore(out / "features.h5")
    feats, classes = [], []
    for name in store.names[:600]:
        r = store.read(name)
        feats.append(r.features.astype(np.float32))
        classes.append(r.classes)
    x, y = np.concatenate(feats), np.concatenate(classes)
    half = len(x) // 2
    means = {c: x[:half][y[:half] == c].mean(0) for c in np.unique(y[:half])}
    keys = np.array(list(means))
    centres = np.stack([means[c] for c in keys])
    test_x, test_y = x[half:], y[half:]
    known = np.isin(test_y, keys)
    pred = keys[((test_x[known, None, :] - centres[None]) ** 2).sum(-1).argmin(1)]
    assert (pred == test_y[known]).mean() > 0.95
    majority = Counter(y.tolist()).most_common(1)[0][1] / len(y)
    assert majority < 0.2


def test_lexicon_classes_exist_and_objects_are_distinct():
    check_lexicon()
    assert len({n.en for n in OBJECTS}) == len(OBJECTS)
    assert not {n.en for n in OBJECTS} & set(AMBIGUOUS)


TINY = dict(train_pairs=8, valid_pairs=2, test_pairs=2, num_regions=12, feature_dim=2)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("num_regions", 4, r"--num-regions 4: the minimum is 12 regions: an image can show 3 objects"),
        ("num_regions", 0, r"--num-regions 0: the minimum is 12"),
        ("feature_dim", 0, r"--feature-dim 0: the minimum is 1"),
        ("train_pairs", 0, r"--train-pairs 0: the minimum is 1"),
        ("valid_pairs", -2, r"--valid-pairs -2: the minimum is 1"),
        ("test_pairs", 0, r"--test-pairs 0: the minimum is 1"),
        ("captions_per_image", 0, r"--captions-per-image 0: the minimum is 1"),
        ("eval_captions_per_image", -1, r"--eval-captions-per-image -1: the minimum is 1"),
        ("seed", -1, r"--seed -1: the minimum is 0"),
        ("ambiguous_rate", 1.5, r"--ambiguous-rate 1.5: a probability, at most 1"),
        ("ambiguous_rate", -0.5, r"--ambiguous-rate -0.5: the minimum is 0"),
        ("feature_noise", -1.0, r"--feature-noise -1.0: the minimum is 0"),
        ("feature_noise", float("nan"), r"--feature-noise nan: not a number"),
        ("dtype", "float64", r"--dtype float64: float16 or float32"),
    ],
)
def test_bad_options_name_the_option_and_write_nothing(tmp_path, option, value, message):
    """--num-regions 4 died with a ValueError traceback from the renderer."""
    from vtlm_fairseq.errors import InputError

    with pytest.raises(InputError, match=message):
        build_toy_world(tmp_path / "w", ToyWorldConfig(**{**TINY, option: value}))
    assert not (tmp_path / "w").exists()


def test_minimum_regions_build(tmp_path):
    """The smallest allowed world builds: the minimum is not set too high."""
    from vtlm_fairseq.toy_world.scenes import MIN_REGIONS

    build_toy_world(tmp_path / "w", ToyWorldConfig(**{**TINY, "num_regions": MIN_REGIONS}))
    assert FeatureStore(tmp_path / "w" / "features.h5").num_regions == MIN_REGIONS


def test_output_folder_that_is_a_file_or_holds_a_world(tmp_path):
    from vtlm_fairseq.errors import InputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"file: not a folder"):
        build_toy_world(tmp_path / "file", ToyWorldConfig(**TINY))
    build_toy_world(tmp_path / "w", ToyWorldConfig(**TINY))
    before = (tmp_path / "w" / "raw" / "train.en").read_text()
    with pytest.raises(InputError, match=r"w/features\.h5: a toy world is there already"):
        build_toy_world(tmp_path / "w", ToyWorldConfig(**{**TINY, "seed": 2}))
    assert (tmp_path / "w" / "raw" / "train.en").read_text() == before

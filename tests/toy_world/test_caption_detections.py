import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import shared_path
from vtlm_fairseq.data.feature_store import FeatureStore
from vtlm_fairseq.toy_world.caption_detections import (
    NAMED_SCORES,
    CaptionDetectionConfig,
    ObjectNames,
    write_caption_detections,
)
from vtlm_fairseq.toy_world.lexicon import class_ids

CAPTIONS = {
    "train": [("a.jpg", "A man in a red t-shirt walks his dog."), ("b.jpg", "Two women sit on a bench."),
              ("c.jpg", "A boy kicks a ball near a building."), ("a.jpg", "Someone walks with a dog and a bicycle."),
              ("d.jpg", "It is raining.")],
    "test": [("e.jpg", "A girl plays the guitar."), ("f.jpg", "Men on a boat.")],
}  # fmt: skip


def write_corpus(root, captions=CAPTIONS):
    (root / "raw").mkdir(parents=True)
    (root / "image_splits").mkdir()
    for split, rows in captions.items():
        (root / "raw" / f"{split}.en").write_text("".join(c + "\n" for _, c in rows))
        (root / "image_splits" / f"{split}.txt").write_text("".join(n + "\n" for n, _ in rows))
    return root / "raw", root / "image_splits"


def named_classes(captions=CAPTIONS):
    names, out = ObjectNames(), {}
    for rows in captions.values():
        for image, caption in rows:
            out.setdefault(image, set()).update(names.find(caption))
    return out


def test_object_names_find_the_detector_classes_a_caption_names():
    ids = class_ids()
    found = ObjectNames().find("A man in a red t-shirt walks two dogs past the Christmas tree.")
    # plurals and hyphenated words found; the longest phrase wins (not Tree)
    assert found == [ids["Man"], ids["Shirt"], ids["Dog"], ids["Christmas tree"]]
    assert ObjectNames().find("It is raining.") == []


def test_store_holds_what_the_captions_name(tmp_path):
    raw, splits = write_corpus(tmp_path)
    cfg = CaptionDetectionConfig(num_regions=6, feature_dim=8, recall=1.0, duplicate_rate=0.0,
                                 false_detections=0.0, scene_classes=3)  # fmt: skip
    stats = write_caption_detections(raw, splits, tmp_path / "f.h5", cfg)
    named = named_classes()
    store = FeatureStore(tmp_path / "f.h5")
    assert sorted(store.names) == sorted(named)
    for image, classes in named.items():
        regions = store.read(image)
        assert regions.features.shape == (cfg.num_regions, cfg.feature_dim)
        confident = set(regions.classes[regions.scores >= NAMED_SCORES[0]].tolist())
        assert confident == classes  # recall 1, no false detections: exactly the named ones
        assert np.all(np.diff(regions.scores.astype(np.float32)) <= 0)  # best first, as a detector
    assert stats["images"] == len(named)
    for split, rows in CAPTIONS.items():
        s = stats["splits"][split]
        assert s["pairs"] == len(rows)
        assert s["named_objects_detected"] == s["named_objects"] == sum(len(named[i]) for i, _ in rows)


def test_recall_and_false_detections_show_in_the_confident_regions(tmp_path):
    rows = [(f"{i}.jpg", "A man and a dog on a bench near a car.") for i in range(300)]
    raw, splits = write_corpus(tmp_path, {"train": rows})
    cfg = CaptionDetectionConfig(num_regions=12, feature_dim=4, recall=0.5, duplicate_rate=0.0,
                                 false_detections=2.0)  # fmt: skip
    stats = write_caption_detections(raw, splits, tmp_path / "f.h5", cfg)["splits"]["train"]
    assert 0.4 < stats["named_objects_detected"] / stats["named_objects"] < 0.6
    store, named = FeatureStore(tmp_path / "f.h5"), set(ObjectNames().find(rows[0][1]))
    false = [sum(c not in named for c in store.read(n).classes[store.read(n).scores >= 0.2].tolist())
             for n, _ in rows]  # fmt: skip
    assert 1.5 < np.mean(false) < 2.5  # Poisson mean 2 (a random class is rarely a named one)


@pytest.mark.parametrize("pool", ["named", "non-entity"])
def test_scene_pool_decides_which_classes_fill_the_regions(tmp_path, pool):
    """'named': the corpus's most named classes fill every image, so the fill
    repeats what captions name; 'non-entity': the fill is never a class of the
    probes' entity words, so an entity class in the regions is the caption's."""
    rows = [(f"{i}.jpg", caption) for i, caption in enumerate(
        ["A man and a dog.", "A man with an orange.", "A woman with a watch.", "A man and a train."] * 30)]
    raw, splits = write_corpus(tmp_path, {"train": rows})
    cfg = CaptionDetectionConfig(num_regions=8, feature_dim=4, recall=1.0, duplicate_rate=0.0,
                                 false_detections=0.0, scene_classes=3, scene_pool=pool)  # fmt: skip
    stats = write_caption_detections(raw, splits, tmp_path / "f.h5", cfg)
    names, store = ObjectNames(), FeatureStore(tmp_path / "f.h5")
    frequency = {}
    for _, caption in rows:
        for c in set(names.find(caption)):
            if pool == "named" or c not in names.entity_classes:
                frequency[c] = frequency.get(c, 0) + 1
    expected_pool = sorted(frequency, key=lambda c: (-frequency[c], c))[: cfg.scene_classes]
    assert stats["scene_classes"] == expected_pool
    fill = set()
    for image, caption in rows:
        regions = store.read(image)
        named = set(names.find(caption))
        confident = regions.scores >= NAMED_SCORES[0]
        assert set(regions.classes[confident].tolist()) == named  # recall 1, no false detections
        fill.update(regions.classes[~confident].tolist())
    assert fill <= set(expected_pool) and fill
    assert (not fill & names.entity_classes) == (pool == "non-entity")
    named_objects = [c for _, caption in rows for c in set(names.find(caption))]
    assert stats["splits"]["train"]["named_objects_of_scene_classes"] == sum(c in expected_pool for c in named_objects)


def test_deterministic_and_independent_of_split_and_order(tmp_path):
    cfg = CaptionDetectionConfig(num_regions=5, feature_dim=6, false_detections=1.0, scene_classes=50)
    raw, splits = write_corpus(tmp_path / "a")
    write_caption_detections(raw, splits, tmp_path / "a.h5", cfg)
    # the same images and captions, in other splits and another order
    rows = [r for rows in CAPTIONS.values() for r in rows][::-1]
    raw2, splits2 = write_corpus(tmp_path / "b", {"all": rows})
    write_caption_detections(raw2, splits2, tmp_path / "b.h5", cfg)
    a, b = FeatureStore(tmp_path / "a.h5"), FeatureStore(tmp_path / "b.h5")
    for name in a.names:
        x, y = a.read(name), b.read(name)
        for key in ("features", "boxes", "classes", "scores"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key))
    write_caption_detections(raw, splits, tmp_path / "c.h5", CaptionDetectionConfig(**{**cfg.__dict__, "seed": 2}))
    c = FeatureStore(tmp_path / "c.h5")
    assert not np.array_equal(a.read("a.jpg").features, c.read("a.jpg").features)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vtlm_fairseq.cli.toy_world", "caption-detections", *map(str, args)],
                          capture_output=True, text=True)  # fmt: skip


def test_command_on_real_multi30k_text(tmp_path):
    """The real Multi30k text of one test split: one image per line, the
    statistics (JSON on stdout) counted from the data."""
    root = shared_path("data", "multi30k")
    split = "test_2017_mscoco"
    out = run_cli(root / "raw", root / "image_splits", tmp_path / "m.h5", "--splits", split,
                  "--num-regions", 12, "--feature-dim", 16)  # fmt: skip
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    lines = (root / "image_splits" / f"{split}.txt").read_text().splitlines()
    assert stats["splits"][split]["pairs"] == len(lines)
    store = FeatureStore(tmp_path / "m.h5")
    assert len(store) == stats["images"] == len({line.split("#")[0] for line in lines})
    s = stats["splits"][split]
    assert 0.8 < s["named_objects_detected"] / s["named_objects"] <= 0.9  # recall 0.9 less the R best cut
    assert s["pairs_naming_an_object"] > 0.5 * s["pairs"]


@pytest.mark.parametrize("problem", ["no image list", "line counts", "bad recall", "exists", "no non-entity class"])
def test_mistakes_are_one_line(tmp_path, problem):
    raw, splits = write_corpus(tmp_path)
    args = [raw, splits, tmp_path / "f.h5"]
    if problem == "no image list":
        (splits / "test.txt").unlink()
        args += ["--splits", "test"]
    elif problem == "line counts":
        (splits / "test.txt").write_text("e.jpg\n")
    elif problem == "bad recall":
        args += ["--recall", "1.5"]
    elif problem == "no non-entity class":
        (raw / "train.en").write_text("A man.\nA dog.\nA boy.\nA man.\nRain.\n")
        (raw / "test.en").write_text("A girl.\nMen.\n")
        args += ["--scene-pool", "non-entity"]
    else:
        (tmp_path / "f.h5").write_text("x")
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert {"no image list": "test.txt", "line counts": "test", "bad recall": "--recall",
            "exists": "f.h5", "no non-entity class": "--scene-pool non-entity"}[problem] in out.stderr  # fmt: skip

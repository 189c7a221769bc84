"""Region extraction with a TensorFlow detector (vtlm_fairseq.features.region_extraction).

The tests that run a detector build a tiny SavedModel (tests/features/tiny_detector.py)
and need TensorFlow (the [extract] extra); without it they are skipped and the
rest (image list, shards, reader, output selection) still runs."""

import json
import sys
import time

import numpy as np
import pytest

from tests.features import tiny_detector as tiny
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreError, merge_stores
from vtlm_fairseq.features.region_extraction import (
    ExtractionConfig,
    ExtractionError,
    ImageEntry,
    ImageReader,
    RegionDetector,
    extract_region_features,
    read_image_list,
    select_regions,
    shard_entries,
)

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(detector folder, image folder, image list, good images' pixels)."""
    tiny.require_tensorflow()
    root = tmp_path_factory.mktemp("extraction")
    detector = tiny.build_tiny_detector(root / "detector")
    good = tiny.make_image_folder(root / "images")
    image_list = root / "images.txt"
    image_list.write_text(tiny.IMAGE_LIST)
    return detector, root / "images", image_list, good


def config_for(world, output, **overrides) -> ExtractionConfig:
    detector, images, image_list, _ = world
    settings = dict(detector=str(detector), image_dir=str(images), image_list=str(image_list),
                    output=str(output), max_regions=3, num_classes=tiny.NUM_CLASSES, batch_size=4,
                    max_in_memory=5)  # fmt: skip
    settings.update(overrides)
    return ExtractionConfig(**settings)


def assert_store_holds(path, good, max_regions=3, atol=4e-3, jpeg_atol=0.05):
    store = FeatureStore(path)
    assert sorted(store.names) == sorted(good)
    for name, pixels in good.items():
        got, want = store.read(name), tiny.expected_regions(pixels, max_regions)
        tolerance = jpeg_atol if name.endswith(".jpg") else atol
        np.testing.assert_allclose(got.features, want["features"], atol=tolerance, err_msg=name)
        np.testing.assert_array_equal(got.boxes, want["boxes"], err_msg=name)
        np.testing.assert_array_equal(got.classes, want["classes"], err_msg=name)
        np.testing.assert_array_equal(got.scores, want["scores"], err_msg=name)
    return store


# -- without TensorFlow --


def test_image_list_skips_blanks_and_repeats_and_names_bad_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.jpg\n\nsub/b.jpg\na.jpg\r\nCOCO_val2014_1.jpg#367178\n  \n")
    listed = read_image_list(path)
    assert listed.entries == [ImageEntry("a.jpg", 1), ImageEntry("sub/b.jpg", 3),
                              ImageEntry("COCO_val2014_1.jpg", 5)]  # fmt: skip
    assert (listed.duplicates, listed.blank_lines) == (1, 2)
    for bad, message in [("a.jpg\nb c.jpg\n", ":2: image name contains whitespace"),
                         ("a.jpg\n/abs/c.jpg\n", ":2: image names are relative to --image-dir"),
                         ("x/../../c.jpg\n", ":1: image names are relative"), ("\n\n", ": no image names")]:  # fmt: skip
        path.write_text(bad)
        with pytest.raises(ExtractionError, match=f"list.txt{message}"):
            read_image_list(path)
    with pytest.raises(ExtractionError, match="nothing.txt: no such file"):
        read_image_list(tmp_path / "nothing.txt")


def test_shards_are_round_robin_disjoint_and_complete():
    entries = [ImageEntry(f"{i}.jpg", i + 1) for i in range(7)]
    shards = [shard_entries(entries, 3, i) for i in range(3)]
    assert [e.name for e in shards[1]] == ["1.jpg", "4.jpg"]
    assert sorted(e.line for shard in shards for e in shard) == list(range(1, 8))
    assert shard_entries(entries, 1, 0) == entries
    with pytest.raises(ExtractionError, match=r"shard id 3 is not in \[0, 3\)"):
        shard_entries(entries, 3, 3)


def test_select_regions_keeps_the_best_valid_detections_pooled():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 5, 3, 2, 4), dtype=np.float32)
    outputs = {
        "detection_scores": np.array([[0.1, 0.8, 0.3, 0.95, 0.5], [0.6, 0.7, 0.2, 0.9, 0.99]], np.float32),
        "detection_classes": np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], np.float32),
        "detection_boxes": np.tile(np.array([-1e-7, 0.2, 0.5, 1.0000001], np.float32), (2, 5, 1)),
        "num_detections": np.array([5.0, 3.0], np.float32),  # image 1: slots 3 and 4 are not real
        "detection_features": maps,
    }
    first, second = select_regions(outputs, max_regions=3, class_offset=1)
    np.testing.assert_array_equal(first.scores, np.float32([0.95, 0.8, 0.5]))
    np.testing.assert_array_equal(first.classes, [3, 1, 4])
    np.testing.assert_allclose(first.features, maps[0, [3, 1, 4]].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(first.boxes[0], np.float32([0, 0.2, 0.5, 1]))
    np.testing.assert_array_equal(second.scores, np.float32([0.7, 0.6, 0.2]))
    # already pooled (B, N, C) features pass through unchanged
    outputs["detection_features"] = maps[:, :, 0, 0, :]
    pooled, _ = select_regions(outputs, max_regions=2, class_offset=0)
    np.testing.assert_array_equal(pooled.features, maps[0, [3, 1], 0, 0, :])
    np.testing.assert_array_equal(pooled.classes, [4, 2])


def test_reader_holds_at_most_max_in_memory_images(tmp_path):
    """The reader runs ahead of a slow consumer only up to its bound; failures
    come back in list order with their reason."""
    names = [f"{i}.img" for i in range(10)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "bad.img").write_bytes(b"bad")
    (tmp_path / "small.img").write_bytes(b"small")
    names[2:2] = ["bad.img", "gone.img", "small.img"]

    def decode(data: bytes) -> np.ndarray:
        if data == b"bad":
            raise ValueError("not an image")
        return np.zeros((4, 4, 3) if data == b"small" else (20, 20, 3), np.uint8)

    bound = 3
    reader = ImageReader([ImageEntry(n, i) for i, n in enumerate(names)], tmp_path, bound, 16, decode)
    seen = []
    try:
        for image in reader:
            # Wait until the reader has filled its permits (or read everything):
            # it must stop there, however long the consumer takes.
            remaining = len(names) - len(seen)
            deadline = time.monotonic() + 10
            while reader.in_memory < min(bound, remaining) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert reader.in_memory == min(bound, remaining)
            seen.append((image.entry.name, image.reason))
            reader.release()
    finally:
        reader.close()
    assert reader.peak_in_memory == bound
    assert [n for n, _ in seen] == names
    reasons = {n: r for n, r in seen if r}
    assert reasons == {"bad.img": "unreadable", "gone.img": "missing", "small.img": "too_small"}


def test_without_tensorflow_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails as if absent
    with pytest.raises(ExtractionError, match=r"needs TensorFlow 2 .*vtlm-fairseq\[extract\]"):
        RegionDetector(tmp_path)


def test_plugin_import_does_not_import_tensorflow():
    import subprocess

    code = "import sys, vtlm_fairseq.features.region_extraction; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


# -- with the tiny TensorFlow detector --


def test_extraction_stores_each_images_best_regions_and_reports_failures(world, tmp_path):
    peaks = []
    config = config_for(world, tmp_path / "f.h5")
    report = extract_region_features(config, on_reader=peaks.append)
    good = world[3]
    assert report.extracted == len(good) and report.already_present == 0
    assert (report.unique_names, report.duplicates, report.blank_lines) == (11, 1, 1)
    assert {f.image: f.reason for f in report.failures} == tiny.FAILED
    assert report.failure_counts() == {"missing": 1, "unreadable": 1, "too_small": 1, "detector_error": 1}
    lines = [json.loads(line) for line in (tmp_path / "f.failures.jsonl").read_text().splitlines()]
    assert [(x["image"], x["line"], x["reason"]) for x in lines] == [
        ("tiny.png", 3, "too_small"), ("broken.jpg", 6, "unreadable"),
        ("gone.png", 8, "missing"), ("refused.png", 10, "detector_error")]  # fmt: skip
    assert "refused width" in lines[3]["detail"] and "Unknown image file format" in lines[1]["detail"]
    store = assert_store_holds(tmp_path / "f.h5", good)
    assert store.num_regions == 3 and store.num_classes == tiny.NUM_CLASSES
    assert str(store.dtype) == "float16" and store.attrs["class_offset"] == "1"
    assert 0 < peaks[0].peak_in_memory <= config.max_in_memory


def test_one_image_per_call_detector_and_float32(world, tmp_path):
    detector = RegionDetector(world[0], signature="batch_one", num_classes=tiny.NUM_CLASSES)
    assert detector.max_batch == 1 and detector.feature_dim == tiny.CHANNELS
    config = config_for(world, tmp_path / "f.h5", signature="batch_one", dtype="float32", batch_size=3)
    report = extract_region_features(config)
    assert report.extracted == len(world[3])
    assert_store_holds(tmp_path / "f.h5", world[3], atol=1e-5)


def test_explicit_class_offset_and_detector_without_features(world, tmp_path):
    with pytest.raises(ExtractionError, match=r"does not output \['detection_features'\].*re-export"):
        RegionDetector(world[0], signature="no_features", num_classes=tiny.NUM_CLASSES)
    with pytest.raises(ExtractionError, match="no signature 'nope'"):
        RegionDetector(world[0], signature="nope")
    # A wrong offset (0 instead of 1) puts class 10 outside the store's 10
    # classes: every image is reported, none is stored with wrong labels.
    report = extract_region_features(config_for(world, tmp_path / "f.h5", class_offset=0))
    bad = [f for f in report.failures if f.reason == "bad_output"]
    assert report.extracted == 0 and len(bad) == len(world[3])
    assert "class id 10 outside [0, 10)" in bad[0].detail
    assert len(FeatureStore(tmp_path / "f.h5")) == 0


def test_second_run_resumes_and_refuses_a_different_layout(world, tmp_path):
    partial = tmp_path / "first_half.txt"
    partial.write_text("a.png\nsub/c.png\ntiny.png\n")
    first = extract_region_features(config_for(world, tmp_path / "f.h5", image_list=str(partial)))
    assert first.extracted == 2 and len(first.failures) == 1

    second = extract_region_features(config_for(world, tmp_path / "f.h5"))
    assert second.already_present == 2 and second.extracted == len(world[3]) - 2
    assert_store_holds(tmp_path / "f.h5", world[3])

    third = extract_region_features(config_for(world, tmp_path / "f.h5"))
    assert third.extracted == 0 and third.already_present == len(world[3])
    assert {f.image for f in third.failures} == set(tiny.FAILED)  # retried, failed again

    with pytest.raises(FeatureStoreError, match="region slots 3, this run asks for 36; pass --max-regions 3"):
        extract_region_features(config_for(world, tmp_path / "f.h5", max_regions=36))
    with pytest.raises(FeatureStoreError, match="dtype float16, this run asks for float32"):
        extract_region_features(config_for(world, tmp_path / "f.h5", dtype="float32"))


def test_two_shards_merged_equal_one_run(world, tmp_path):
    single = extract_region_features(config_for(world, tmp_path / "all.h5"))
    shards = [
        extract_region_features(config_for(world, tmp_path / f"part{i}.h5", num_shards=2, shard_id=i))
        for i in range(2)
    ]
    assert [s.in_shard for s in shards] == [6, 5]
    assert sum(s.extracted for s in shards) == single.extracted
    assert sorted(f.image for s in shards for f in s.failures) == sorted(f.image for f in single.failures)
    merge_stores([tmp_path / "part0.h5", tmp_path / "part1.h5"], tmp_path / "merged.h5")
    merged, whole = FeatureStore(tmp_path / "merged.h5"), FeatureStore(tmp_path / "all.h5")
    assert sorted(merged.names) == sorted(whole.names)
    for name in whole.names:
        a, b = merged.read(name), whole.read(name)
        for key in ("features", "boxes", "classes", "scores"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=f"{name} {key}")

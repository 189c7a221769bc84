import os
import pickle

import shutil

import h5py
import numpy as np
import pytest

from tests.data.store_helpers import random_regions
from vtlm_fairseq.data.feature_store import (
    _VALIDATION_ATTRS,
    VALIDATED_CHECKS,
    VALIDATION_VERSION,
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    merge_stores,
    partial_path,
)

R, D = 6, 16


def make_store(path, counts=(6, 3, 0, 6), dtype="float16", seed=0, prefix="img", dim=D):
    rng = np.random.default_rng(seed)
    written = {}
    with FeatureStoreWriter(path, num_regions=R, feature_dim=dim, dtype=dtype) as w:
        for i, n in enumerate(counts):
            name = f"{prefix}{i}.jpg"
            written[name] = random_regions(rng, n, dim)
            w.add(name, written[name])
    return written


@pytest.mark.parametrize("dtype, atol", [("float16", 4e-3), ("float32", 0)])
def test_round_trip_with_variable_region_counts(tmp_path, dtype, atol):
    written = make_store(tmp_path / "s.h5", dtype=dtype)
    store = FeatureStore(tmp_path / "s.h5")
    assert len(store) == 4 and store.num_regions == R and store.feature_dim == D
    assert str(store.dtype) == dtype
    for name, regions in written.items():
        got = store.read(name)
        assert len(got) == len(regions)
        np.testing.assert_allclose(got.features, regions.features, atol=atol, rtol=1e-3)
        np.testing.assert_array_equal(got.boxes, regions.boxes)
        np.testing.assert_array_equal(got.classes, regions.classes)
        np.testing.assert_array_equal(got.scores, regions.scores)
    summary = store.summary()
    assert summary["regions_per_image"] == {"min": 0, "mean": 3.75, "max": 6}


def test_float16_store_is_about_half_of_float32(tmp_path):
    make_store(tmp_path / "a.h5", counts=(6,) * 100, dtype="float16", dim=1536)
    make_store(tmp_path / "b.h5", counts=(6,) * 100, dtype="float32", dim=1536)
    ratio = os.path.getsize(tmp_path / "a.h5") / os.path.getsize(tmp_path / "b.h5")
    assert 0.45 < ratio < 0.65


def test_features_are_chunked_per_image(tmp_path):
    make_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["features"].chunks == (1, R, D)


def test_append_resumes_and_skips_present(tmp_path):
    path = tmp_path / "s.h5"
    make_store(path, counts=(6, 6))
    extra = random_regions(np.random.default_rng(5), 4, D)
    with FeatureStoreWriter(path, append=True) as w:
        assert "img0.jpg" in w and len(w) == 2
        w.add("new.jpg", extra)
        with pytest.raises(FeatureStoreError, match="'img1.jpg' is already in the store"):
            w.add("img1.jpg", extra)
    store = FeatureStore(path)
    assert store.names == ["img0.jpg", "img1.jpg", "new.jpg"]
    np.testing.assert_array_equal(store.read("new.jpg").classes, extra.classes)


def test_store_appears_only_when_complete(tmp_path):
    """A writer that dies before close() leaves no store, only its .partial,
    which the next writer discards; an existing store stays as it was."""
    path = tmp_path / "s.h5"
    before = make_store(path, counts=(6, 2))
    rng = np.random.default_rng(0)
    w = FeatureStoreWriter(path, append=True)
    w.add("new.jpg", random_regions(rng, 3, D))
    w._file.close()  # killed: close() never ran
    assert partial_path(path).exists()
    assert FeatureStore(path).names == list(before)
    fresh = tmp_path / "fresh.h5"
    w = FeatureStoreWriter(fresh, num_regions=R, feature_dim=D)
    w.add("a.jpg", random_regions(rng, 3, D))
    w._file.close()
    assert not fresh.exists()
    with FeatureStoreWriter(fresh, num_regions=R, feature_dim=D) as again:  # the rerun
        again.add("b.jpg", random_regions(rng, 3, D))
    assert FeatureStore(fresh).names == ["b.jpg"] and not partial_path(fresh).exists()


def test_failed_writer_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with FeatureStoreWriter(path, num_regions=R, feature_dim=D) as w:
            w.add("a.jpg", random_regions(np.random.default_rng(0), 3, D))
            raise RuntimeError("disk full")
    assert not path.exists() and not partial_path(path).exists()


def test_existing_store_is_not_overwritten_silently(tmp_path):
    path = tmp_path / "s.h5"
    make_store(path, counts=(2,))
    with pytest.raises(FeatureStoreError, match="s.h5: exists already"):
        FeatureStoreWriter(path, num_regions=R, feature_dim=D)
    with FeatureStoreWriter(path, num_regions=R, feature_dim=D, overwrite=True) as w:
        w.add("other.jpg", random_regions(np.random.default_rng(0), 3, D))
    assert FeatureStore(path).names == ["other.jpg"]


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"complete": False}, "incomplete store: the command that wrote it did not finish"),
        ({"version": 1}, "format version 1.*may be incomplete"),
        ({"count": 1}, "records 1 images in 2 rows"),
    ],
)
def test_incomplete_or_old_stores_are_refused(tmp_path, attrs, message):
    path = tmp_path / "s.h5"
    make_store(path, counts=(2, 3))
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)
    with pytest.raises(FeatureStoreError, match=message):
        FeatureStore(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.features.__setitem__((1, 2), np.nan), "features contain NaN or inf"),
        (lambda r: r.features.__setitem__((0, 0), np.inf), "features contain NaN or inf"),
        (lambda r: r.scores.__setitem__(0, np.nan), "boxes or scores contain NaN"),
        (lambda r: r.classes.__setitem__(0, 601), r"class id 601 outside \[0, 601\)"),
        (lambda r: r.classes.__setitem__(0, -1), r"class id -1 outside"),
        (lambda r: r.boxes.__setitem__((0, 2), 1.5), r"box coordinates outside \[0, 1\]"),
        (lambda r: r.boxes.__setitem__((0, 2), 0.0), "a box has ymax < ymin"),
    ],
)
def test_writer_rejects_bad_values_naming_the_image(tmp_path, change, message):
    regions = random_regions(np.random.default_rng(0), 4, D)
    regions.boxes[:, :2] = 0.2
    change(regions)
    with FeatureStoreWriter(tmp_path / "s.h5", num_regions=R, feature_dim=D) as w:
        with pytest.raises(FeatureStoreError, match=r"s\.h5: image 'bad\.jpg': " + message):
            w.add("bad.jpg", regions)


def test_writer_rejects_bad_shapes(tmp_path):
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(tmp_path / "s.h5", num_regions=R, feature_dim=D) as w:
        with pytest.raises(FeatureStoreError, match="7 regions, the store holds at most 6"):
            w.add("a", random_regions(rng, 7, D))
        with pytest.raises(FeatureStoreError, match=r"features have shape \(3, 8\), expected \(3, 16\)"):
            w.add("b", random_regions(rng, 3, 8))
        with pytest.raises(FeatureStoreError, match="bad image name"):
            w.add(" c ", random_regions(rng, 3, D))


def corrupt(path, fn):
    """Changes a store and removes its validation record: a store written by
    other code, which opens check."""
    with h5py.File(path, "a") as f:
        fn(f)
        for key in _VALIDATION_ATTRS:
            f.attrs.pop(key, None)


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda f: f["features"].__setitem__((1, 0, 3), np.nan), r"image 'img1\.jpg': features contain NaN"),
        (lambda f: f["classes"].__setitem__((3, 1), 700), r"image 'img3\.jpg': class id 700"),
        (lambda f: f["boxes"].__setitem__((0, 0, 0), -0.5), r"image 'img0\.jpg': box coordinates"),
        (lambda f: f["num_regions"].__setitem__(2, 9), r"image 'img2\.jpg': num_regions 9 outside"),
        (lambda f: f["names"].__setitem__(3, "img0.jpg"), r"image 'img0\.jpg' is stored twice \(rows 0 and 3\)"),
        (lambda f: f.attrs.__setitem__("format", "other"), "not a region-feature store"),
        (lambda f: f.attrs.__setitem__("version", 99), "store format version 99"),
        (lambda f: f["scores"].resize(3, axis=0), r"dataset 'scores' has shape \(3, 6\), expected \(4, 6\)"),
        (lambda f: f.__delitem__("boxes"), r"missing datasets \['boxes'\]"),
    ],
)
def test_open_validates_and_names_file_and_image(tmp_path, fn, message):
    path = tmp_path / "s.h5"
    make_store(path)
    corrupt(path, fn)
    with pytest.raises(FeatureStoreError, match=r"s\.h5: .*" + message):
        FeatureStore(path)


def test_quick_validation_checks_features_on_read(tmp_path):
    path = tmp_path / "s.h5"
    make_store(path)
    corrupt(path, lambda f: f["features"].__setitem__((1, 0, 3), np.inf))
    store = FeatureStore(path, validate="quick")  # as for stores above 2 GB
    store.read("img0.jpg")
    with pytest.raises(FeatureStoreError, match=r"image 'img1\.jpg': features contain NaN or inf"):
        store.read("img1.jpg")


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(FeatureStoreError, match="cannot be read as HDF5"):
        FeatureStore(tmp_path / "x.h5")
    with pytest.raises(FeatureStoreError, match="no such feature store"):
        FeatureStore(tmp_path / "none.h5")


def test_rows_for_order_file_policies(tmp_path):
    make_store(tmp_path / "s.h5")
    store = FeatureStore(tmp_path / "s.h5")
    names = ["img1.jpg", "gone.jpg", "img0.jpg", "lost.jpg"]
    with pytest.raises(
        FeatureStoreError,
        match=r"train\.order:2: image 'gone\.jpg' is not in .*s\.h5 \(1 more images missing\)",
    ):
        store.rows_for(names, "train.order")
    rows, absent = store.rows_for(names, "train.order", missing="drop")
    assert rows.tolist() == [1, -1, 0, -1]
    assert absent == [(2, "gone.jpg"), (4, "lost.jpg")]


def test_lazy_handle_per_process_and_pickling(tmp_path):
    make_store(tmp_path / "s.h5")
    store = FeatureStore(tmp_path / "s.h5")
    assert not store.is_open  # nothing held open after validation
    store.read("img0.jpg")
    assert store.is_open and store._file is None  # rows read with pread: no HDF5 handle held
    clone = pickle.loads(pickle.dumps(store))
    assert not clone.is_open and clone._fd is None
    np.testing.assert_array_equal(clone.read("img3.jpg").classes, store.read("img3.jpg").classes)
    store._pid = -1  # as seen from a forked child: the inherited descriptor is not reused
    old = store._fd
    store.read("img0.jpg")
    assert store.is_open and store._fd != old
    os.close(old)


def test_merge_shards(tmp_path):
    a = make_store(tmp_path / "a.h5", counts=(6, 2), seed=1, prefix="a")
    b = make_store(tmp_path / "b.h5", counts=(1,), seed=2, prefix="b")
    assert merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5") == 3
    merged = FeatureStore(tmp_path / "m.h5")
    assert merged.names == ["a0.jpg", "a1.jpg", "b0.jpg"]
    for name, regions in {**a, **b}.items():
        np.testing.assert_array_equal(merged.read(name).classes, regions.classes)
    shutil.copyfile(tmp_path / "a.h5", tmp_path / "a_copy.h5")
    with pytest.raises(FeatureStoreError, match="'a0.jpg' is also in an earlier input"):
        merge_stores([tmp_path / "a.h5", tmp_path / "a_copy.h5"], tmp_path / "m2.h5")
    assert not (tmp_path / "m2.h5").exists() and not partial_path(tmp_path / "m2.h5").exists()
    with pytest.raises(FeatureStoreError, match="a.h5: given twice"):
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "a.h5"], tmp_path / "m3.h5")


def test_merge_never_destroys_a_store(tmp_path):
    """merge x x, merge EXISTING other, and a merge failing half way."""
    x = tmp_path / "x.h5"
    make_store(x, counts=(6, 2), seed=1, prefix="x")
    make_store(tmp_path / "y.h5", counts=(3,), seed=2, prefix="y")
    original = x.read_bytes()
    with pytest.raises(FeatureStoreError, match="the output is also an input"):
        merge_stores([x, x], x)
    with pytest.raises(FeatureStoreError, match="the output is also an input"):
        merge_stores([tmp_path / "y.h5", tmp_path / "." / "x.h5"], x, force=True)
    with pytest.raises(FeatureStoreError, match="x.h5: exists already; use --force"):
        merge_stores([tmp_path / "y.h5"], x)
    assert x.read_bytes() == original
    # an input whose features turn out to hold NaN: the merge fails at that
    # image, the existing output is untouched and nothing partial remains
    make_store(tmp_path / "nan.h5", counts=(2, 2, 2), seed=3, prefix="n")
    with h5py.File(tmp_path / "nan.h5", "a") as f:
        f["features"][2, 0, 0] = np.nan
    with pytest.raises(FeatureStoreError, match="image 'n2.jpg': features contain NaN"):
        merge_stores([tmp_path / "y.h5", tmp_path / "nan.h5"], x, force=True)
    assert x.read_bytes() == original and not partial_path(x).exists()
    assert merge_stores([tmp_path / "y.h5"], x, force=True) == 1
    assert FeatureStore(x).names == ["y0.jpg"]


def test_wrong_paths_are_named(tmp_path):
    with pytest.raises(FeatureStoreError, match="is a folder, not a feature store"):
        FeatureStore(tmp_path)
    w = FeatureStoreWriter(tmp_path / "s.h5", num_regions=R, feature_dim=D)
    w._file.close()  # killed
    with pytest.raises(FeatureStoreError, match="only the unfinished s.h5.partial of an interrupted writer"):
        FeatureStore(tmp_path / "s.h5")
    make_store(tmp_path / "a.h5")
    with pytest.raises(FeatureStoreError, match="is a folder; give the merged store's file name"):
        merge_stores([tmp_path / "a.h5"], tmp_path)


class _CountReads:
    """Counts the HDF5 dataset reads (h5py.Dataset.__getitem__) made inside."""

    def __init__(self, monkeypatch):
        self.reads = []
        real = h5py.Dataset.__getitem__

        def counted(dataset, key):
            self.reads.append(dataset.name)
            return real(dataset, key)

        monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)


def test_writer_records_validation_and_open_reads_no_dataset(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    written = make_store(path, counts=(6, 3, 0, 6) * 50)
    with h5py.File(path) as f:
        assert f.attrs["validated_checks"] == VALIDATED_CHECKS and f.attrs["validated_count"] == len(written)
    reads = _CountReads(monkeypatch).reads
    store = FeatureStore(path)
    assert store.validated and reads == []  # attributes and shapes only
    rows, _ = store.rows_for(list(written)[::-1])
    assert rows.tolist() == list(range(len(written)))[::-1]
    assert "/names" not in reads  # the lookup reads the stored name index, not the names


def test_unvalidated_store_is_checked_on_open_and_validate_records_it(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    make_store(path)
    corrupt(path, lambda f: None)  # the record removed: as written by other code
    reads = _CountReads(monkeypatch).reads
    store = FeatureStore(path)
    assert not store.validated and "/boxes" in reads and "/features" in reads  # checked as before
    store.validate(record=True)
    assert store.validated
    reads.clear()
    again = FeatureStore(path)
    assert again.validated and reads == []
    assert again.rows_for(["img3.jpg", "img0.jpg"])[0].tolist() == [3, 0]


def test_a_record_of_older_checks_is_not_trusted(tmp_path):
    path = tmp_path / "s.h5"
    make_store(path)
    with h5py.File(path, "a") as f:
        f["classes"][1, 0] = 700
        f.attrs["validated_version"] = VALIDATION_VERSION - 1
    with pytest.raises(FeatureStoreError, match=r"image 'img1\.jpg': class id 700"):
        FeatureStore(path)


def test_full_validation_rescans_a_validated_store(tmp_path):
    path = tmp_path / "s.h5"
    make_store(path)
    with h5py.File(path, "a") as f:  # changed behind the record's back
        f["features"][3, 1, 0] = np.nan
    FeatureStore(path)  # trusted: not scanned
    with pytest.raises(FeatureStoreError, match=r"image 'img3\.jpg': features contain NaN"):
        FeatureStore(path, validate="full")


def test_append_keeps_the_record_only_of_a_validated_store(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.h5"
    make_store(path, counts=(2, 3))
    with FeatureStoreWriter(path, append=True) as w:
        w.add("new.jpg", random_regions(rng, 4, D))
    assert FeatureStore(path).validated and FeatureStore(path).row("new.jpg") == 2
    corrupt(path, lambda f: None)
    with FeatureStoreWriter(path, append=True) as w:
        w.add("newer.jpg", random_regions(rng, 4, D))
    store = FeatureStore(path)
    assert not store.validated and store.row("newer.jpg") == 3


def test_lookup_of_unusual_names(tmp_path):
    rng = np.random.default_rng(4)
    names = ["b", "a/ü.jpg", "a", "long-" * 20]
    with FeatureStoreWriter(tmp_path / "s.h5", num_regions=R, feature_dim=D) as w:
        for name in names:
            w.add(name, random_regions(rng, 2, D))
    store = FeatureStore(tmp_path / "s.h5")
    queries = names + ["", "a/ü.jpg.x", "long-" * 21, "ab"]
    assert store.find_rows(queries).tolist() == [0, 1, 2, 3, -1, -1, -1, -1]
    assert "a/ü.jpg" in store and "long-" not in store and store.names == names


@pytest.mark.parametrize("sorted_by_score", [True, False])
def test_max_regions_serves_the_top_k_by_score(tmp_path, sorted_by_score):
    rng = np.random.default_rng(5)
    regions = random_regions(rng, 6, D)  # scores descending
    if not sorted_by_score:
        regions.scores[:] = regions.scores[::-1].copy()
    with FeatureStoreWriter(tmp_path / "s.h5", num_regions=R, feature_dim=D, dtype="float32") as w:
        w.add("a", regions)
        w.add("few", random_regions(rng, 2, D))
    k = 4
    store = FeatureStore(tmp_path / "s.h5", max_regions=k)
    assert store.num_regions == k and store.stored_regions == R
    got = store.read("a")
    keep = np.sort(np.argsort(-regions.scores)[:k])
    np.testing.assert_array_equal(got.scores, regions.scores[keep])
    np.testing.assert_array_equal(got.features, regions.features[keep])
    np.testing.assert_array_equal(got.classes, regions.classes[keep])
    assert len(store.read("few")) == 2
    assert FeatureStore(tmp_path / "s.h5", max_regions=99).num_regions == R
    with pytest.raises(FeatureStoreError, match="--max-regions must be at least 1"):
        FeatureStore(tmp_path / "s.h5", max_regions=0)


def test_rows_written_in_blocks_read_back_across_block_edges(tmp_path):
    """The writer gathers rows into blocks; stores of more than a block, and
    appends that start mid-block, read back row for row."""
    from vtlm_fairseq.data.feature_store import _RowBlock

    rng = np.random.default_rng(5)
    block = _RowBlock.ROWS
    counts = rng.integers(0, R + 1, 2 * block + 37)
    written = make_store(tmp_path / "s.h5", counts=counts[: block + 3], dtype="float32")
    more = {}
    with FeatureStoreWriter(tmp_path / "s.h5", append=True) as w:
        for i, n in enumerate(counts[block + 3 :]):
            more[f"more{i}.jpg"] = random_regions(rng, int(n), D)
            w.add(f"more{i}.jpg", more[f"more{i}.jpg"])
    store = FeatureStore(tmp_path / "s.h5")
    assert len(store) == len(counts) and store.validated
    for name, regions in {**written, **more}.items():
        got = store.read(name)
        assert len(got) == len(regions)
        np.testing.assert_array_equal(got.features, regions.features)
        np.testing.assert_array_equal(got.classes, regions.classes)

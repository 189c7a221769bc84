"""Rows read with one pread at their chunk's offset are the rows h5py reads."""

import os

import h5py
import numpy as np
import pytest

from tests.data.store_helpers import random_regions
from vtlm_fairseq.data.chunk_reads import DirectRows
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter

R, D = 7, 5


@pytest.fixture
def h5(tmp_path):
    """Datasets laid out as a store's, with row counts that end mid-chunk."""
    rng = np.random.default_rng(0)
    path = tmp_path / "rows.h5"
    n = 300
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.standard_normal((n, R, D)).astype(np.float16), chunks=(1, R, D))
        f.create_dataset("boxes", data=rng.random((n, R, 4), dtype=np.float32), chunks=(64, R, 4))
        f.create_dataset("classes", data=rng.integers(0, 601, (n, R)).astype(np.int16), chunks=(256, R))
        f.create_dataset("packed", data=rng.random((n, R), dtype=np.float32), chunks=(256, R), compression="gzip")
        f.create_dataset("split_rows", data=rng.random((n, R), dtype=np.float32), chunks=(16, 3))
        grown = f.create_dataset("grown", (0, R), maxshape=(None, R), dtype=np.float32, chunks=(64, R))
        grown.resize(200, axis=0)
        grown[:70] = rng.random((70, R), dtype=np.float32)  # chunks past row 127 never written
    fd = os.open(path, os.O_RDONLY)
    with h5py.File(path, "r") as f:
        yield f, fd
    os.close(fd)


@pytest.mark.parametrize("key", ["features", "boxes", "classes"])
def test_rows_and_their_prefixes_equal_h5py(h5, key):
    f, fd = h5
    rows = DirectRows.of(f[key])
    assert rows is not None
    for row in (0, 1, 63, 64, 255, 256, 299):
        for items in (None, 0, 3, R):
            expected = f[key][row] if items is None else f[key][row, :items]
            got = rows.read(fd, row, items)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)


def test_layouts_that_need_hdf5_are_left_to_it(h5):
    f, fd = h5
    assert DirectRows.of(f["packed"]) is None  # compressed
    assert DirectRows.of(f["split_rows"]) is None  # a row spans chunks


def test_a_chunk_never_written_is_no_row(h5):
    f, fd = h5
    rows = DirectRows.of(f["grown"])
    np.testing.assert_array_equal(rows.read(fd, 5), f["grown"][5])
    assert rows.read(fd, 150) is None  # h5py would give the fill value


def test_a_compressed_store_is_read_through_hdf5(tmp_path):
    """A store written by other code with compressed features reads the same."""
    rng = np.random.default_rng(1)
    written = {f"i{k}.jpg": random_regions(rng, n, 16) for k, n in enumerate((4, 0, 2))}
    with FeatureStoreWriter(tmp_path / "plain.h5", num_regions=4, feature_dim=16) as w:
        for name, regions in written.items():
            w.add(name, regions)
    with h5py.File(tmp_path / "plain.h5", "r") as src, h5py.File(tmp_path / "packed.h5", "w") as dst:
        dst.attrs.update(src.attrs)
        for key, d in src.items():
            options = {"compression": "gzip"} if key == "features" else {}
            dst.create_dataset(key, data=d[:], chunks=(1,) + d.shape[1:] if d.ndim > 1 else None, **options)
    for path in ("plain.h5", "packed.h5"):
        store = FeatureStore(tmp_path / path)
        store.prepare_reads()
        assert (store._layouts["features"] is None) == (path == "packed.h5")
        for name, regions in written.items():
            got = store.read(name)
            np.testing.assert_allclose(got.features, regions.features, atol=4e-3, rtol=1e-3)
            np.testing.assert_array_equal(got.boxes, regions.boxes)


def test_prepared_reads_need_no_hdf5_call(tmp_path, monkeypatch):
    """Once prepared (as a dataset does when it is built), rows are read
    without any HDF5 call, also by a copy of the store (a DataLoader worker):
    a reader thread then never holds HDF5's global lock, which an exiting
    process could wait for forever."""
    import pickle

    import vtlm_fairseq.data.feature_store as feature_store

    rng = np.random.default_rng(3)
    written = {f"i{k}.jpg": random_regions(rng, n, 16) for k, n in enumerate((4, 0, 2, 3))}
    with FeatureStoreWriter(tmp_path / "s.h5", num_regions=4, feature_dim=16) as w:
        for name, regions in written.items():
            w.add(name, regions)
    store = FeatureStore(tmp_path / "s.h5")
    rows = store.find_rows(list(written))
    store.prepare_reads()
    copy = pickle.loads(pickle.dumps(store))

    def no_hdf5(*args, **kwargs):
        raise AssertionError("HDF5 opened while reading rows")

    monkeypatch.setattr(feature_store, "h5_file", no_hdf5)
    monkeypatch.setattr(h5py, "File", no_hdf5)
    for reader in (store, copy):
        for (name, regions), row in zip(written.items(), rows):
            got = reader.read_row(int(row))
            assert len(got) == len(regions)
            np.testing.assert_array_equal(got.classes, regions.classes)

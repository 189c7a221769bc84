"""Several stores (extraction shards) read as one through open_store."""

import pickle

import numpy as np
import pytest

from tests.data.test_feature_store import R, make_store
from tests.data.store_helpers import random_regions
from vtlm_fairseq.data import feature_store
from vtlm_fairseq.data.feature_store import (
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    ShardedFeatureStore,
    merge_stores,
    open_store,
    store_exists,
)


@pytest.fixture
def shards(tmp_path):
    """Three shards in a folder, the images of each, in shard order."""
    folder = tmp_path / "shards"
    folder.mkdir()
    written = {}
    for k, counts in enumerate([(6, 3), (0,), (2, 5, 1)]):
        written.update(make_store(folder / f"part-{k}.h5", counts=counts, seed=k, prefix=f"s{k}-"))
    return folder, written


def check_reads_as_one(store, written):
    assert isinstance(store, ShardedFeatureStore) and len(store) == len(written)
    assert store.names == list(written) and store.num_regions == R
    rows, absent = store.rows_for(list(written)[::-1] + ["nowhere.jpg"], missing="drop")
    assert rows.tolist() == list(range(len(written)))[::-1] + [-1] and absent == [(len(written) + 1, "nowhere.jpg")]
    for name, regions in written.items():
        np.testing.assert_array_equal(store.read(name).classes, regions.classes)
        assert name in store


def test_a_folder_a_list_and_a_manifest_read_as_one(tmp_path, shards):
    folder, written = shards
    check_reads_as_one(open_store(folder), written)
    parts = sorted(folder.glob("*.h5"))
    check_reads_as_one(open_store(",".join(map(str, parts))), written)
    manifest = tmp_path / "shards.txt"
    manifest.write_text("# the extraction's shards\n" + "".join(f"shards/{p.name}\n" for p in parts) + "\n")
    store = open_store(manifest)
    check_reads_as_one(store, written)
    assert store.path == str(manifest) and store_exists(manifest) and store_exists(folder)
    assert isinstance(open_store(parts[0]), FeatureStore)  # one store stays a FeatureStore


def test_open_reads_only_attributes_and_is_picklable(shards, monkeypatch):
    from tests.data.test_feature_store import _CountReads

    folder, written = shards
    reads = _CountReads(monkeypatch).reads
    store = open_store(folder)
    assert store.validated and reads == []
    name = list(written)[-2]
    store.read(name)
    clone = pickle.loads(pickle.dumps(store))  # as sent to a spawned DataLoader worker
    assert clone._lookup is None and not any(s.is_open for s in clone.shards)
    np.testing.assert_array_equal(clone.read(name).features, store.read(name).features)


def test_bad_sets_are_named(tmp_path, shards):
    folder, _ = shards
    make_store(tmp_path / "dup.h5", counts=(1,), prefix="s2-")
    with pytest.raises(FeatureStoreError, match=r"dup\.h5: image 's2-0\.jpg' is also in .*part-2\.h5"):
        open_store(f"{folder},{tmp_path / 'dup.h5'}").rows_for(["s0-0.jpg"])
    with FeatureStoreWriter(tmp_path / "wide.h5", num_regions=R + 1, feature_dim=16) as w:
        w.add("w.jpg", random_regions(np.random.default_rng(0), 2, 16))
    with pytest.raises(FeatureStoreError, match=rf"wide\.h5: R={R + 1}, D=16, classes=601 differ from"):
        open_store(f"{folder},{tmp_path / 'wide.h5'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureStoreError, match=r"empty: a folder without feature stores"):
        open_store(tmp_path / "empty")
    (tmp_path / "list.txt").write_text("shards\nmissing.h5\n")
    with pytest.raises(FeatureStoreError, match=r"list\.txt:2: no such feature store: .*missing\.h5"):
        open_store(tmp_path / "list.txt")
    assert not store_exists(tmp_path / "list.txt") and not store_exists(f"{folder},{tmp_path / 'nope.h5'}")


def test_open_handles_are_capped(shards, monkeypatch):
    folder, written = shards
    monkeypatch.setattr(feature_store, "MAX_OPEN_SHARDS", 1)
    store = open_store(folder)
    for name in written:
        store.read(name)
        assert sum(s.is_open for s in store.shards) == 1


def test_max_regions_and_validate_reach_every_shard(shards):
    folder, written = shards
    store = open_store(folder, max_regions=2)
    assert store.num_regions == 2 and all(len(store.read(n)) == min(2, len(r)) for n, r in written.items())
    store.validate(record=True)  # a full scan of each shard


def test_merge_takes_a_folder(tmp_path, shards):
    folder, written = shards
    assert merge_stores([folder], tmp_path / "all.h5") == len(written)
    assert FeatureStore(tmp_path / "all.h5").names == list(written)


def test_validate_command_scans_every_shard_and_records_it(shards, caplog):
    import h5py

    from tests.data.test_feature_store import corrupt
    from vtlm_fairseq.cli import features

    folder, _ = shards
    corrupt(folder / "part-0.h5", lambda f: None)  # not validated
    corrupt(folder / "part-2.h5", lambda f: f["features"].__setitem__((1, 2, 0), np.inf))
    with pytest.raises(SystemExit) as e:
        features.cli_main(["validate", str(folder)])
    assert e.value.code == 2 and "part-2.h5: image 's2-1.jpg': features contain NaN or inf" in caplog.text
    assert FeatureStore(folder / "part-0.h5", validate="none").validated  # the good shard before it: recorded
    with h5py.File(folder / "part-2.h5", "a") as f:
        f["features"][1, 2, 0] = 0
    with pytest.raises(SystemExit) as e:
        features.cli_main(["validate", str(folder)])
    assert e.value.code == 0 and open_store(folder).validated


def test_summary_of_shards(shards):
    folder, written = shards
    summary = open_store(folder).summary()
    assert summary["images"] == len(written) and len(summary["shards"]) == len(list(folder.glob("*.h5")))
    assert summary["regions_per_image"]["max"] == max(len(r) for r in written.values()) and summary["validated"]


def split_into_shards(store_path, folder, parts: int):
    """A store's images, written as ``parts`` shards of a folder."""
    source = FeatureStore(store_path)
    folder.mkdir()
    bounds = np.linspace(0, len(source), parts + 1).astype(int)
    for k in range(parts):
        with FeatureStoreWriter(folder / f"part-{k}.h5", num_regions=source.stored_regions,
                                feature_dim=source.feature_dim, dtype=str(source.dtype)) as w:  # fmt: skip
            for row in range(bounds[k], bounds[k + 1]):
                w.add(source.names[row], source.read_row(row))
    return source


@pytest.mark.parametrize("task", ["visual_translation_lm", "multimodal_translation"])
def test_tasks_read_shards_with_max_regions(toy_data, tmp_path, task):
    from tests.conftest import setup_fairseq

    data, store_path, _ = toy_data
    source = split_into_shards(store_path, tmp_path / "shards", 3)
    k = source.stored_regions - 2
    _, t = setup_fairseq([str(data), "--task", task, "--region-features", str(tmp_path / "shards"),
                          "--max-regions", str(k), "--arch", "vtlm_base" if task != "multimodal_translation"
                          else "vtlm_translation_base"])  # fmt: skip
    assert isinstance(t.store, ShardedFeatureStore) and t.store.num_regions == k
    t.load_dataset("valid")
    regions = t.datasets["valid"].regions  # both tasks' pair datasets
    order = (data / "valid.order").read_text().split()
    assert regions.rows.tolist() == source.find_rows(order).tolist()  # rows through the shards, same order
    assert all(len(regions.store.read_row(int(r))) <= k for r in regions.rows)
    assert max(len(source.read_row(int(r))) for r in regions.rows) > k  # so K cut some

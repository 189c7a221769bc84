import os
import pickle

import numpy as np
import pytest

from tests.conftest import shared_path
from tests.data.store_helpers import random_regions
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreError
from vtlm_fairseq.features.reference_features import (
    export_reference_pickles,
    import_reference_pickles,
    load_reference_pickle,
)


def reference_pickle(path, regions, **overrides):
    data = {
        "detection_features": regions.features,
        "detection_boxes": regions.boxes,
        "detection_classes": regions.classes.astype(np.uint16),
        "detection_scores": regions.scores,
        "num_detections": len(regions),
    }
    data.update(overrides)
    with open(path, "wb") as f:
        pickle.dump(data, f)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_import_reports_broken_and_missing(tmp_path):
    rng = np.random.default_rng(0)
    pk = tmp_path / "pickles"
    pk.mkdir()
    good = {f"{i}.jpg": random_regions(rng, 36, 32) for i in range(3)}
    for name, regions in good.items():
        reference_pickle(pk / f"{name}.pkl", regions)
    reference_pickle(pk / "nan.jpg.pkl", random_regions(rng, 36, 32), detection_scores=np.full(36, np.nan, np.float32))
    reference_pickle(pk / "class.jpg.pkl", random_regions(rng, 36, 32), detection_classes=np.full(36, 900, np.uint16))
    (pk / "truncated.jpg.pkl").write_bytes((pk / "0.jpg.pkl").read_bytes()[:100])
    with open(pk / "nokeys.jpg.pkl", "wb") as f:
        pickle.dump({"detection_boxes": np.zeros((2, 4))}, f)
    with open(pk / "evil.jpg.pkl", "wb") as f:
        pickle.dump({"detection_features": Payload()}, f)
    order = tmp_path / "train.order"
    order.write_text("0.jpg\n1.jpg\nnan.jpg\n2.jpg\nnever.jpg\n")

    report = import_reference_pickles(pk, tmp_path / "s.h5", order_files=[order])
    assert report.imported == 3
    broken = dict(report.broken)
    assert set(broken) == {str(pk / f"{n}.jpg.pkl") for n in ("nan", "class", "truncated", "nokeys", "evil")}
    assert "boxes or scores contain NaN" in broken[str(pk / "nan.jpg.pkl")]
    assert "class id 900" in broken[str(pk / "class.jpg.pkl")]
    assert "missing keys" in broken[str(pk / "nokeys.jpg.pkl")]
    assert "refusing to load posix.system" in broken[str(pk / "evil.jpg.pkl")]
    assert report.missing == [(str(order), 3, "nan.jpg"), (str(order), 5, "never.jpg")]
    assert any("broken:" in line for line in report.lines())

    store = FeatureStore(tmp_path / "s.h5")
    assert sorted(store.names) == sorted(good)
    for name, regions in good.items():
        got = store.read(name)
        np.testing.assert_allclose(got.features, regions.features, rtol=1e-3, atol=4e-3)
        np.testing.assert_array_equal(got.classes, regions.classes)

    store.close()
    # rerun with append: nothing imported twice
    again = import_reference_pickles(pk, tmp_path / "s.h5", append=True)
    assert again.imported == 0 and again.skipped_present == 3


def test_import_keeps_num_detections_and_top_r(tmp_path):
    rng = np.random.default_rng(1)
    pk = tmp_path / "p"
    pk.mkdir()
    reference_pickle(pk / "a.pkl", random_regions(rng, 50, 8), num_detections=40)
    reference_pickle(pk / "b.pkl", random_regions(rng, 50, 8), num_detections=20)
    import_reference_pickles(pk, tmp_path / "s.h5", num_regions=36)
    store = FeatureStore(tmp_path / "s.h5")
    assert len(store.read("a")) == 36 and len(store.read("b")) == 20


def test_export_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    pk = tmp_path / "p"
    pk.mkdir()
    regions = random_regions(rng, 10, 8)
    reference_pickle(pk / "x.jpg.pkl", regions)
    import_reference_pickles(pk, tmp_path / "s.h5", dtype="float32", num_regions=12)
    (path,) = export_reference_pickles(tmp_path / "s.h5", ["x.jpg"], tmp_path / "out")
    back = load_reference_pickle(path)
    np.testing.assert_array_equal(back.features, regions.features)
    np.testing.assert_array_equal(back.classes, regions.classes)


def test_no_pickles_is_an_error(tmp_path):
    with pytest.raises(FeatureStoreError, match="no .pkl or .pickle files"):
        import_reference_pickles(tmp_path, tmp_path / "s.h5")


def test_reference_fixture_pickles_import_exactly(tmp_path):
    """The reference code's own toy features (../shared/fixtures)."""
    pk = shared_path("fixtures", "reference_vtlm", "toy_data", "features")
    order = shared_path("fixtures", "reference_vtlm", "toy_data", "data", "train.order")
    report = import_reference_pickles(pk, tmp_path / "s.h5", dtype="float32", order_files=[order])
    assert report.imported == 10 and not report.broken and not report.missing
    store = FeatureStore(tmp_path / "s.h5")
    with open(pk / "toyimg_A_004.pkl", "rb") as f:
        ref = pickle.load(f)
    got = store.read("toyimg_A_004")
    np.testing.assert_array_equal(got.features, ref["detection_features"])
    np.testing.assert_array_equal(got.boxes, ref["detection_boxes"])
    np.testing.assert_array_equal(got.classes, ref["detection_classes"])


def test_feature_dimension_is_that_of_most_pickles(tmp_path):
    """An odd file first in sort order must not set the dimension and turn
    every correct file away."""
    rng = np.random.default_rng(3)
    pk = tmp_path / "pickles"
    pk.mkdir()
    reference_pickle(pk / "000_odd.jpg.pkl", random_regions(rng, 5, 12))
    good = {f"{i}.jpg": random_regions(rng, 5, 32) for i in range(4)}
    for name, regions in good.items():
        reference_pickle(pk / f"{name}.pkl", regions)
    report = import_reference_pickles(pk, tmp_path / "s.h5", num_regions=5)
    assert report.imported == len(good)
    assert [path for path, _ in report.broken] == [str(pk / "000_odd.jpg.pkl")]
    assert "expected (5, 32)" in report.broken[0][1]
    assert FeatureStore(tmp_path / "s.h5").feature_dim == 32
    forced = import_reference_pickles(pk, tmp_path / "odd.h5", num_regions=5, feature_dim=12)
    assert forced.imported == 1


@pytest.mark.parametrize("count", [-1, 7])
def test_num_detections_outside_the_file_is_broken(tmp_path, count):
    """-1 would slice from the end (keeping 5 of 6 regions), 7 past it."""
    path = tmp_path / "a.jpg.pkl"
    reference_pickle(path, random_regions(np.random.default_rng(0), 6, 8), num_detections=count)
    with pytest.raises(ValueError, match=rf"num_detections {count} outside \[0, 6\]"):
        load_reference_pickle(path)


def test_failed_import_leaves_no_store(tmp_path, monkeypatch):
    import vtlm_fairseq.features.reference_features as rf

    rng = np.random.default_rng(0)
    pk = tmp_path / "pickles"
    pk.mkdir()
    for i in range(3):
        reference_pickle(pk / f"{i}.jpg.pkl", random_regions(rng, 4, 8))
    calls = {"n": 0}
    real = rf.load_reference_pickle

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # the dimension sample reads all three first
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rf, "load_reference_pickle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_reference_pickles(pk, tmp_path / "s.h5", num_regions=4)
    assert list(tmp_path.glob("s.h5*")) == []


def test_nothing_importable_is_an_error_not_an_empty_store(tmp_path):
    pk = tmp_path / "pickles"
    pk.mkdir()
    reference_pickle(pk / "a.jpg.pkl", random_regions(np.random.default_rng(0), 4, 8))
    with pytest.raises(FeatureStoreError, match=r"no pickle could be imported \(1 broken\); the first: .*a.jpg.pkl"):
        import_reference_pickles(pk, tmp_path / "s.h5", num_regions=4, feature_dim=99)
    assert list(tmp_path.glob("s.h5*")) == []


def test_import_takes_the_region_count_from_the_pickles(tmp_path):
    rng = np.random.default_rng(6)
    pk = tmp_path / "p"
    pk.mkdir()
    counts = {"a": 12, "b": 7, "c": 12}
    regions = {name: random_regions(rng, n, 8) for name, n in counts.items()}
    for name, r in regions.items():
        r.scores[:] = rng.permutation(r.scores)  # not in score order: the top ones by score are kept
        reference_pickle(pk / f"{name}.pkl", r)
    import_reference_pickles(pk, tmp_path / "s.h5")
    store = FeatureStore(tmp_path / "s.h5")
    assert store.stored_regions == max(counts.values())  # not padded to 36
    assert {name: len(store.read(name)) for name in counts} == counts
    k = 5
    report = import_reference_pickles(pk, tmp_path / "top.h5", num_regions=k, dtype="float32")
    assert report.truncated == sum(n > k for n in counts.values())
    assert any(f"held more than {k} regions" in line for line in report.lines())
    got, want = FeatureStore(tmp_path / "top.h5").read("a"), regions["a"]
    keep = np.sort(np.argsort(-want.scores)[:k])
    np.testing.assert_array_equal(got.scores, want.scores[keep])
    np.testing.assert_array_equal(got.features, want.features[keep])

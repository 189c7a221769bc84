import numpy as np
import pytest
import torch

from tests.data.test_feature_store import make_store
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreError
from vtlm_fairseq.data.region_dataset import RegionFeatureDataset, collate_regions, region_item


@pytest.fixture
def store(tmp_path):
    written = make_store(tmp_path / "s.h5", counts=(6, 3, 0, 6, 2, 5, 1, 4))
    return FeatureStore(tmp_path / "s.h5"), written


def test_items_follow_the_order_file(tmp_path, store):
    store, written = store
    order = tmp_path / "train.order"
    order.write_text("img3.jpg\nimg1.jpg\nimg1.jpg\nimg2.jpg\n")
    ds = RegionFeatureDataset.from_order_file(store, order)
    assert len(ds) == 4
    item = ds[1]  # the real regions only, features in the store's dtype
    assert item["features"].shape == (3, 16) and str(item["features"].dtype) == f"torch.{store.dtype}"
    assert item["mask"].tolist() == [True] * 3
    np.testing.assert_array_equal(item["features"].numpy(), store.read("img1.jpg").features)
    np.testing.assert_array_equal(item["classes"].numpy(), written["img1.jpg"].classes)
    assert len(ds[3]["mask"]) == 0  # an image without detections


def test_collater_trims_to_the_widest_image(tmp_path, store):
    store, _ = store
    ds = RegionFeatureDataset(store, ["img1.jpg", "img4.jpg"])
    batch = ds.collater([ds[0], ds[1]])
    assert batch["features"].shape == (2, 3, 16)
    assert batch["mask"].tolist() == [[True] * 3, [True, True, False]]
    assert (batch["features"][1, 2] == 0).all() and (batch["boxes"][1, 2] == 0).all()
    # items padded to the store's slots (region_item) collate to the same batch
    padded = [region_item(store.read(name), store.num_regions) for name in ("img1.jpg", "img4.jpg")]
    assert padded[1]["features"].shape[0] == store.num_regions
    for key, value in collate_regions(padded).items():
        assert torch.equal(value, batch[key]), key


def test_missing_images_fail_or_drop(tmp_path, store):
    store, _ = store
    order = tmp_path / "valid.order"
    order.write_text("img0.jpg\nmissing.jpg\nimg2.jpg\n")
    with pytest.raises(FeatureStoreError, match=r"valid\.order:2: image 'missing\.jpg'"):
        RegionFeatureDataset.from_order_file(store, order)
    ds = RegionFeatureDataset.from_order_file(store, order, missing="drop")
    assert ds.kept_indices.tolist() == [0, 2] and ds.num_dropped == 1
    with pytest.raises(IndexError, match="sentence pair 1 has no image \\('missing.jpg'"):
        ds[1]


def test_order_files_are_looked_up_in_chunks_with_their_line_numbers(tmp_path, store, monkeypatch):
    from vtlm_fairseq.data import region_dataset

    store, _ = store
    monkeypatch.setattr(region_dataset, "ORDER_CHUNK_LINES", 3)
    names = ["img0.jpg", "gone.jpg", "img2.jpg", "img1.jpg", "img3.jpg", "img0.jpg", "lost.jpg", "img2.jpg"]
    order = tmp_path / "train.order"
    order.write_text("\n".join(names) + "\n")
    with pytest.raises(FeatureStoreError, match=r"train\.order:2: image 'gone\.jpg' .*\(1 more images missing\)"):
        RegionFeatureDataset.from_order_file(store, order)
    ds = RegionFeatureDataset.from_order_file(store, order, missing="drop")
    whole = RegionFeatureDataset(store, [n if n in store else "x" for n in names], missing="drop")
    assert ds.rows.tolist() == whole.rows.tolist() and ds.kept_indices.tolist() == [0, 2, 3, 4, 5, 7]
    assert [ds.image_name(i) for i in (6, 7)] == ["lost.jpg", "img2.jpg"]  # read again from the order file


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_reads_in_dataloader_workers_match_the_main_process(store, context):
    store, _ = store
    names = [f"img{i % 8}.jpg" for i in range(40)]
    ds = RegionFeatureDataset(store, names)
    ds[0]  # the main process holds a handle before the workers start
    expected = [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=context
    )
    got = list(loader)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for key in a:
            assert torch.equal(a[key], b[key])

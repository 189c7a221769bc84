"""fairseq's LanguagePairDataset with the image's regions of each pair, no
dropped remainder batch, and evaluation splits in corpus order."""

from typing import Optional

import numpy as np

import torch
from fairseq.data import BaseWrapperDataset, LanguagePairDataset

from .batching import KeepAllBatchesMixin, first_epoch_seed
from .region_dataset import RegionFeatureDataset
from .source_degradation import SourceDegrader


def _reorder(batch, order):
    """Rows of every batch tensor in ``order`` (LanguagePairDataset sorts a
    batch by source length; evaluation wants corpus order)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = _reorder(value, order)
        elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == len(order):
            out[key] = value.index_select(0, order)
        else:
            out[key] = value
    return out


class IndexSubsetDataset(BaseWrapperDataset):
    """Items ``indices[i]`` of a dataset (the pairs that kept their image)."""

    def __init__(self, dataset, indices):
        super().__init__(dataset)
        self.indices = np.asarray(indices, dtype=np.int64)
        self._sizes = np.asarray(dataset.sizes)[self.indices]

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def __len__(self):
        return len(self.indices)

    @property
    def sizes(self):
        return self._sizes

    def size(self, index):
        return int(self._sizes[index])

    def num_tokens(self, index):
        return int(self._sizes[index])


class MultimodalPairDataset(KeepAllBatchesMixin, LanguagePairDataset):
    """Item i is pair ``pair_indices[i]`` of the underlying corpus (all pairs
    by default); with ``regions``, batches carry that pair's image regions in
    ``net_input`` (``region_features``, ``region_boxes``, ``region_mask``).
    ``corpus_order`` batches in corpus order (generation output then comes
    out in corpus order too); otherwise by length, as fairseq does.
    ``degrade_source``: masks or deletes source words at random (training
    sources, see source_degradation).
    ``item_ids``: the id item i has in its batch (default: i), which
    fairseq-interactive numbers its output by: the good lines of an input
    buffer keep their line's id when bad lines are left out."""

    def __init__(
        self,
        *args,
        regions: Optional[RegionFeatureDataset] = None,
        pair_indices=None,
        corpus_order: bool = False,
        on_batch=None,
        item_ids=None,
        order_seed: Optional[int] = None,
        degrade_source: Optional[SourceDegrader] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.degrade_source = degrade_source
        self.order_seed = order_seed
        self.item_ids = None if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        self.on_batch = on_batch
        self.regions = regions
        self.pair_indices = None if pair_indices is None else np.asarray(pair_indices, dtype=np.int64)
        self.corpus_order = corpus_order

    def pair_index(self, index: int) -> int:
        return int(self.pair_indices[index]) if self.pair_indices is not None else int(index)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if self.item_ids is not None:
            item["id"] = int(self.item_ids[index])
        if self.degrade_source is not None:
            item["source"] = self.degrade_source(item["source"], self.pair_index(index))
        if self.regions is not None:
            item["regions"] = self.regions[self.pair_index(index)]
        return item

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if self.degrade_source is not None:
            self.degrade_source.set_epoch(epoch)

    def collater(self, samples, pad_to_length=None):
        batch = super().collater(samples, pad_to_length=pad_to_length)
        if self.corpus_order and samples:
            batch = _reorder(batch, torch.argsort(batch["id"]))
        if self.regions is not None and samples:
            # LanguagePairDataset sorts a batch by source length: follow its ids
            by_id = {s["id"]: s["regions"] for s in samples}
            regions = self.regions.collater([by_id[int(i)] for i in batch["id"]])
            batch["net_input"].update(
                region_features=regions["features"],
                region_boxes=regions["boxes"],
                region_mask=regions["mask"],
            )
        if self.on_batch is not None and samples:
            self.on_batch(batch)
        return batch

    def ordered_indices(self):
        if self.corpus_order:
            return np.arange(len(self), dtype=np.int64)
        if self.shuffle and self.order_seed is not None:
            with first_epoch_seed(self.order_seed):  # a resumed run draws the same batches
                return super().ordered_indices()
        return super().ordered_indices()




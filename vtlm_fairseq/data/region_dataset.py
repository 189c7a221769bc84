"""A fairseq dataset of image regions, aligned with sentence pairs through a
split's order file (line i = image of sentence pair i)."""

import logging
from typing import List

import numpy as np
import torch
from fairseq.data import FairseqDataset

from .corpus import read_order_file
from .feature_store import FeatureStore, RegionFeatures

logger = logging.getLogger(__name__)


def region_item(regions: RegionFeatures, slots: int) -> dict:
    """One image's regions as float32 tensors padded to ``slots`` rows, with
    ``mask`` True for real regions."""
    n = len(regions)
    features = torch.zeros(slots, regions.features.shape[1])
    features[:n] = torch.from_numpy(regions.features.astype(np.float32))
    boxes = torch.zeros(slots, 4)
    boxes[:n] = torch.from_numpy(regions.boxes.astype(np.float32))
    classes = torch.zeros(slots, dtype=torch.long)
    classes[:n] = torch.from_numpy(regions.classes.astype(np.int64))
    scores = torch.zeros(slots)
    scores[:n] = torch.from_numpy(regions.scores.astype(np.float32))
    mask = torch.zeros(slots, dtype=torch.bool)
    mask[:n] = True
    return {"features": features, "boxes": boxes, "classes": classes, "scores": scores, "mask": mask}


def collate_regions(samples) -> dict:
    """Stacks items, trimmed to the most regions any item of the batch has."""
    if not samples:
        return {}
    width = max(int(s["mask"].sum()) for s in samples)
    return {key: torch.stack([s[key][:width] for s in samples]) for key in samples[0]}


class RegionFeatureDataset(FairseqDataset):
    """Item i is the regions of sentence pair i's image, as float32 tensors:
    ``features`` (R, D), ``boxes`` (R, 4), ``classes`` (R,), ``scores`` (R,)
    and ``mask`` (R,), True for real regions and False for padding slots.

    ``missing``: 'fail' (default) raises on the first image absent from the
    store, naming the order file and line; 'drop' keeps going and lists the
    sentence indices to keep in ``kept_indices`` (the others have no image).
    """

    def __init__(
        self,
        store: FeatureStore,
        image_names: List[str],
        source: str = "order file",
        missing: str = "fail",
    ):
        super().__init__()
        self.store = store
        self.image_names = image_names
        self.rows, absent = store.rows_for(image_names, source, missing)
        self.kept_indices = np.nonzero(self.rows >= 0)[0]
        if absent:
            logger.warning(
                "%s: %d of %d sentence pairs have no image in %s and are dropped "
                "(first: line %d, '%s')",
                source,
                len(absent),
                len(image_names),
                store.path,
                absent[0][0],
                absent[0][1],
            )
        self.num_dropped = len(absent)

    @classmethod
    def from_order_file(cls, store: FeatureStore, order_path, missing: str = "fail"):
        return cls(store, read_order_file(order_path), str(order_path), missing)

    def reorder_images(self, mode: str, seed: int = 1) -> None:
        """Incongruent images for controls and probes: 'shuffled' gives each
        sentence pair another pair's image (a seeded permutation), 'reversed'
        the image of the pair at the mirrored position; 'aligned' keeps them.
        Pairs without an image stay without one."""
        kept = self.kept_indices
        if mode == "aligned":
            return
        if mode == "shuffled":
            permuted = np.random.default_rng(seed).permutation(len(kept))
        elif mode == "reversed":
            permuted = np.arange(len(kept))[::-1]
        else:
            raise ValueError(f"image order must be aligned, shuffled or reversed: {mode}")
        self.rows[kept] = self.rows[kept][permuted]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = int(self.rows[index])
        if row < 0:
            raise IndexError(
                f"sentence pair {index} has no image ('{self.image_names[index]}' is "
                f"not in {self.store.path}); it should have been dropped"
            )
        return region_item(self.store.read_row(row), self.store.num_regions)

    def collater(self, samples):
        return collate_regions(samples)

    def num_tokens(self, index):
        return self.store.num_regions

    def size(self, index):
        return self.store.num_regions

    @property
    def supports_prefetch(self):
        return False

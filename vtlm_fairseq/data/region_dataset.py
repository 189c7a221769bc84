"""A fairseq dataset of image regions, aligned with sentence pairs through a
split's order file (line i = image of sentence pair i)."""

import itertools
import logging
import math
from typing import Sequence

import numpy as np
import torch
from fairseq.data import FairseqDataset

from ..text.corpus import iter_order_file
from .feature_store import FeatureStore, RegionFeatures, encode_names

logger = logging.getLogger(__name__)

ORDER_CHUNK_LINES = 65536  # order-file lines looked up at a time


def region_tensors(regions: RegionFeatures) -> dict:
    """One image's regions as tensors, unpadded and without copying the
    features: those stay in the store's dtype (float16 by default; the model
    converts a whole batch at once), so a DataLoader worker hands half the
    bytes over. Boxes and scores are float32, classes int64, ``mask`` True
    for every (real) region."""
    return {
        "features": torch.from_numpy(np.ascontiguousarray(regions.features)),
        "boxes": torch.from_numpy(regions.boxes.astype(np.float32, copy=False)),
        "classes": torch.from_numpy(regions.classes.astype(np.int64)),
        "scores": torch.from_numpy(regions.scores.astype(np.float32, copy=False)),
        "mask": torch.ones(len(regions), dtype=torch.bool),
    }


def region_item(regions: RegionFeatures, slots: int) -> dict:
    """``region_tensors`` padded to ``slots`` rows (``mask`` False there)."""
    return {key: _padded([value], slots)[0] for key, value in region_tensors(regions).items()}


def _padded(tensors, rows: int) -> torch.Tensor:
    """The tensors' first ``rows`` rows stacked, zero-padded: one copy each
    (one op when none needs padding, as with a detector's fixed region
    count). In a DataLoader worker the batch is made in shared memory, as
    torch's default_collate does, so handing it to the trainer copies
    nothing."""
    tensors = [t if len(t) == rows else t[:rows] for t in tensors]
    shape = (len(tensors), rows) + tuple(tensors[0].shape[1:])
    first = tensors[0]
    if torch.utils.data.get_worker_info() is not None:
        out = first.new(first._typed_storage()._new_shared(math.prod(shape), device=first.device)).resize_(shape)
    else:
        out = first.new_empty(shape)
    if all(len(t) == rows for t in tensors):
        return torch.stack(tensors, out=out)
    out.zero_()
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
    return out


def collate_regions(samples) -> dict:
    """Stacks items (padded or not), to the most regions any item of the
    batch has."""
    if not samples:
        return {}
    width = max(int(np.count_nonzero(s["mask"].numpy())) for s in samples)
    return {key: _padded([s[key] for s in samples], width) for key in samples[0]}


class RegionFeatureDataset(FairseqDataset):
    """Item i is the regions of sentence pair i's image (``region_tensors``:
    ``features`` (n, D) in the store's dtype, ``boxes`` (n, 4), ``classes``
    (n,), ``scores`` (n,), ``mask`` (n,)) for its n real regions; the
    collater pads a batch to its widest image, ``mask`` False there.

    ``missing``: 'fail' (default) raises on the first image absent from the
    store, naming the order file and line; 'drop' keeps going and lists the
    sentence indices to keep in ``kept_indices`` (the others have no image).
    """

    def __init__(
        self,
        store: FeatureStore,
        image_names: Sequence[str],
        source: str = "order file",
        missing: str = "fail",
    ):
        super().__init__()
        rows, absent = store.rows_for(encode_names(image_names), source, missing)
        self._setup(store, rows, absent, source, names=list(image_names))

    @classmethod
    def from_order_file(cls, store: FeatureStore, order_path, missing: str = "fail"):
        """The images of an order file's lines, looked up a chunk of lines at
        a time: a process never holds every name (at 1M pairs the names and
        the lookup's temporaries would add some 100 MB to its peak)."""
        if missing not in ("fail", "drop"):
            raise ValueError(f"missing must be 'fail' or 'drop', not {missing!r}")
        source, rows, absent, line = str(order_path), [], [], 1
        names = iter_order_file(order_path)
        while chunk := list(itertools.islice(names, ORDER_CHUNK_LINES)):
            found, lost = store.rows_for(encode_names(chunk), source, "drop", first_line=line)
            rows.append(found)
            absent += lost
            line += len(chunk)
        if absent and missing == "fail":
            raise store.missing_images(source, absent)
        dataset = cls.__new__(cls)
        FairseqDataset.__init__(dataset)
        dataset._setup(store, np.concatenate(rows) if rows else np.empty(0, np.int64), absent, source,
                       order_file=source)  # fmt: skip
        return dataset

    def _setup(self, store, rows: np.ndarray, absent, source: str, names=None, order_file=None) -> None:
        self.store = store
        self.rows = rows
        # the dataset reads by row; an order file's names are read from it
        # again where a message or a probe needs one
        self._names, self._order_file = names, order_file
        store.forget_names()  # looked up once per split
        # here, in the process that builds the dataset: reading rows then
        # needs no HDF5 call, in fairseq's prefetch thread or its workers
        store.prepare_reads()
        self.kept_indices = np.nonzero(self.rows >= 0)[0]
        if absent:
            logger.warning(
                "%s: %d of %d sentence pairs have no image in %s and are dropped (first: line %d, '%s')",
                source, len(absent), len(self.rows), store.path, absent[0][0], absent[0][1],
            )  # fmt: skip
        self.num_dropped = len(absent)

    def image_name(self, index: int) -> str:
        """The image name of sentence pair ``index`` (its order-file line)."""
        if self._names is not None:
            return self._names[index]
        return next(itertools.islice(iter_order_file(self._order_file), index, None))

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
                f"sentence pair {index} has no image ('{self.image_name(index)}' is "
                f"not in {self.store.path}); it should have been dropped"
            )
        return region_tensors(self.store.read_row(row))

    def collater(self, samples):
        return collate_regions(samples)

    def num_tokens(self, index):
        return self.store.num_regions

    def size(self, index):
        return self.store.num_regions

    @property
    def supports_prefetch(self):
        return False

"""Rows of an HDF5 dataset read straight from the file: one ``pread`` of
exactly the row's bytes at its chunk's byte offset, without HDF5's
selection machinery.

Why: the training loader reads one image at a time, at random. Through
h5py each read of a row costs some 20 us of HDF5 overhead per dataset, and
the small per-image arrays (boxes, classes, scores) are chunked over many
images, so HDF5 reads a whole chunk (36 KB for one image's 576 bytes of
boxes) where the row is all that is needed. A store's datasets are chunked,
unfiltered (no compression) and written once, so a row's bytes lie at a
fixed place in the file: the chunk index is read once per process
(``chunk_iter``, about 1 us a chunk) and each read is then a system call.
Datasets this cannot serve (compressed, filtered, chunks that split a row,
an HDF5 without ``chunk_iter``) return None from ``DirectRows.of`` and are
read through h5py as before."""

import os
from typing import Optional

import h5py
import numpy as np


class DirectRows:
    """Where each row of ``dataset`` (first axis: rows) lies in its file, and
    reads of a row's leading part from a descriptor of that file. The layout
    is a fact of the file: it is read once (in the process that prepares a
    dataset) and holds in DataLoader workers too, which then never call
    HDF5 (whose global lock a killed or exiting reader thread could hold)."""

    def __init__(self, dataset: h5py.Dataset):
        self.dtype = dataset.dtype
        self.row_shape = dataset.shape[1:]
        self.item_bytes = int(np.prod(self.row_shape[1:], dtype=np.int64)) * self.dtype.itemsize  # one sub-row
        self.row_bytes = self.item_bytes * (self.row_shape[0] if self.row_shape else 1)
        self.chunk_rows = dataset.chunks[0]
        self.offsets = np.full(-(-dataset.shape[0] // self.chunk_rows), -1, dtype=np.int64)
        offsets, chunk_rows = self.offsets, self.chunk_rows

        def record(info):
            offsets[info.chunk_offset[0] // chunk_rows] = info.byte_offset

        dataset.id.chunk_iter(record)

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> Optional["DirectRows"]:
        """The layout of ``dataset``, or None where reading it needs HDF5."""
        chunks = dataset.chunks
        if (chunks is None or tuple(chunks[1:]) != tuple(dataset.shape[1:]) or dataset.compression is not None
                or dataset._filters or not hasattr(dataset.id, "chunk_iter") or dataset.dtype.byteorder == ">"
                or not dataset.dtype.isnative or dataset.dtype.kind not in "fiu"):  # fmt: skip
            return None
        return cls(dataset)

    def read(self, fd: int, row: int, items: Optional[int] = None) -> Optional[np.ndarray]:
        """Row ``row``, or its first ``items`` entries along the row's first
        axis, from ``fd`` (the file, open); None when the row's chunk was
        never written."""
        offset = self.offsets[row // self.chunk_rows]
        if offset < 0:
            return None
        shape = self.row_shape if items is None else (items,) + self.row_shape[1:]
        out = np.empty(shape, dtype=self.dtype)
        if out.nbytes:
            start = int(offset) + (row % self.chunk_rows) * self.row_bytes
            got = os.preadv(fd, [out], start)
            if got != out.nbytes:
                raise OSError(f"short read: {got} of {out.nbytes} bytes at {start}")
        return out

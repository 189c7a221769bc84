"""The region-feature store: one HDF5 file per corpus (or per extraction
shard), one row per image.

Layout (N images, R region slots, D feature dims):

- ``names``        (N,)       UTF-8 image names
- ``features``     (N, R, D)  float16 (default) or float32, chunked per image
- ``boxes``        (N, R, 4)  float32 ``[ymin, xmin, ymax, xmax]`` in [0, 1]
- ``classes``      (N, R)     int16 detector class ids in ``[0, num_classes)``
- ``scores``       (N, R)     float32 detection scores
- ``num_regions``  (N,)       int16 regions actually present; rows past it are padding
- ``sorted_names`` (N,)       the names as fixed-width UTF-8 bytes, sorted, and
- ``sorted_rows``  (N,)       int64 their rows: the name -> row index, looked up
  with numpy's searchsorted (no Python dict of every name in every process)

Validation happens once, when a store is written (every image is checked
before it is written) or by ``vtlm-features validate``, and is recorded in
the file's attributes (``validated_version``, ``validated_checks``,
``validated_count``, ``validated_by``). Opening a store so marked reads its
attributes and shapes only; a store without the mark (or checked by an older
version of the checks) is checked on open as before.

Several stores (extraction shards) are read as one by ``open_store``: a
comma-separated list, a folder of ``*.h5`` or a ``.txt`` manifest listing
them. Reads open each file lazily in each process, without HDF5 file locking
(network file systems refuse it), so a store can be shared by DataLoader
workers (h5py handles must not cross a fork) and by many machines.
"""

import bisect
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from ..errors import InputError
from .chunk_reads import DirectRows

logger = logging.getLogger(__name__)

FORMAT_NAME = "vtlm-region-features"
# 2: stores record that they are complete (``complete``), written through a
# temporary file renamed into place; 1 could not tell a finished store from
# an interrupted one
FORMAT_VERSION = 2
DEFAULT_NUM_CLASSES = 601
_GROW_BY = 1024
# Scan every feature for NaN/inf on open below this size; above it the scan is
# left to ``vtlm-features validate`` and each read checks its own image.
FULL_SCAN_BYTES = 2 << 30
_SCAN_ROWS = 4096
# features read per step of a full scan: bounds the memory of opening a store
# (4096 rows of 36 x 1536 float16 features are 450 MB)
_SCAN_BYTES = 64 << 20
_ROW_KEYS = ("features", "boxes", "classes", "scores")
_ALL_KEYS = ("names",) + _ROW_KEYS + ("num_regions",)
_INDEX_KEYS = ("sorted_names", "sorted_rows")
# The record of a full validation. Bump VALIDATION_VERSION when the checks
# change: stores checked by older code are then checked again on open.
VALIDATION_VERSION = 1
VALIDATED_CHECKS = "layout,names,num_regions,classes,boxes,scores,features"
_VALIDATION_ATTRS = ("validated_version", "validated_checks", "validated_count", "validated_by")
# attributes the writer sets itself
_LAYOUT_ATTRS = ("format", "version", "num_classes", "box_format", "count", "complete") + _VALIDATION_ATTRS
# HDF5 file handles one process keeps open over the shards of a sharded store
# (each holds a file descriptor; the usual limit is 1024 per process)
MAX_OPEN_SHARDS = 256


class FeatureStoreError(InputError):
    """A broken or inconsistent store; the message names the file and image."""


@dataclass
class RegionFeatures:
    """One image's regions, without padding rows."""

    features: np.ndarray  # (n, D)
    boxes: np.ndarray  # (n, 4)
    classes: np.ndarray  # (n,)
    scores: np.ndarray  # (n,)

    def __len__(self):
        return len(self.classes)


def check_regions(regions: RegionFeatures, where: str, num_classes: int, dim=None):
    """Raises FeatureStoreError (prefixed by ``where``) on inconsistent shapes
    or values of one image's regions."""
    n = len(regions.classes)
    f, b, c, s = regions.features, regions.boxes, regions.classes, regions.scores
    if f.ndim != 2 or f.shape[0] != n or (dim is not None and f.shape[1] != dim):
        want = f"({n}, {dim if dim is not None else 'D'})"
        raise FeatureStoreError(f"{where}: features have shape {f.shape}, expected {want}")
    if b.shape != (n, 4):
        raise FeatureStoreError(f"{where}: boxes have shape {b.shape}, expected ({n}, 4)")
    if s.shape != (n,):
        raise FeatureStoreError(f"{where}: scores have shape {s.shape}, expected ({n},)")
    if not np.isfinite(f).all():
        raise FeatureStoreError(f"{where}: features contain NaN or inf")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise FeatureStoreError(f"{where}: boxes or scores contain NaN or inf")
    if n and (c.min() < 0 or c.max() >= num_classes):
        raise FeatureStoreError(
            f"{where}: class id {int(c.min() if c.min() < 0 else c.max())} "
            f"outside [0, {num_classes})"
        )
    if n and (b.min() < 0 or b.max() > 1):
        raise FeatureStoreError(f"{where}: box coordinates outside [0, 1]")
    if n and ((b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any()):
        raise FeatureStoreError(f"{where}: a box has ymax < ymin or xmax < xmin")


def top_regions(regions: RegionFeatures, k: int) -> RegionFeatures:
    """The ``k`` regions of highest detection score (all if there are no
    more), in their stored order."""
    if len(regions) <= k:
        return regions
    keep = np.sort(np.argsort(-regions.scores, kind="stable")[:k])
    return RegionFeatures(
        features=regions.features[keep], boxes=regions.boxes[keep],
        classes=regions.classes[keep], scores=regions.scores[keep],
    )  # fmt: skip


def h5_file(path, mode: str = "r") -> h5py.File:
    """An HDF5 file without file locking. Readers need none (a store is never
    changed in place while it is read: writers build ``.partial`` files and
    rename them), and NFS/Lustre refuse HDF5's locks ("unable to lock file,
    errno 37"); each writer owns its ``.partial``."""
    return h5py.File(path, mode, locking=False)


def partial_path(path) -> Path:
    """Where a writer builds ``path`` until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FeatureStoreWriter:
    """Writes a store so that ``path`` is only ever a complete store or
    absent: rows go to ``path.partial``, which ``close()`` marks complete and
    renames into place. A writer that is killed, or that fails (an exception
    inside ``with``), leaves the old ``path`` (if any) untouched; the next
    writer discards the stale ``.partial``.

    ``append=True`` adds images to an existing store (a copy of it is
    extended, then renamed over it); ``overwrite=True`` replaces an existing
    store; otherwise an existing ``path`` is an error. Every image is checked
    before it is written, so ``close()`` records the store as validated
    (with its sorted name index); an append to a store that was not
    validated keeps it unvalidated."""

    def __init__(
        self,
        path,
        num_regions: int = 36,
        feature_dim: int = 1536,
        dtype: str = "float16",
        num_classes: int = DEFAULT_NUM_CLASSES,
        append: bool = False,
        overwrite: bool = False,
        attrs: Optional[Dict[str, str]] = None,
    ):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self._file = None
        self._block: Optional[_RowBlock] = None
        if self.path.is_dir():
            raise FeatureStoreError(f"{self.path}: is a folder, not a store file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            logger.warning("%s: removing the incomplete store of an interrupted writer", self.partial)
            self.partial.unlink()
        if append and self.path.exists():
            FeatureStore(self.path, validate="none")  # complete and well-formed, or an error
            shutil.copyfile(self.path, self.partial)
            self._file = h5_file(self.partial, "a")
            self._count = _check_layout(self._file, self.path)
            self._validated = _validation_recorded(self._file, self._count)
            self._file.attrs["complete"] = False
            self.num_regions, self.feature_dim = self._file["features"].shape[1:]
            self.num_classes = int(self._file.attrs["num_classes"])
            names = self._file["names"].asstr()[: self._count]
            self._names = {name: i for i, name in enumerate(names)}
            return
        if self.path.exists() and not (append or overwrite):
            raise FeatureStoreError(f"{self.path}: exists already (replace it explicitly, or write another file)")
        if dtype not in ("float16", "float32"):
            raise FeatureStoreError(f"{self.path}: dtype must be float16 or float32, not {dtype}")
        if num_regions < 1 or feature_dim < 1 or num_classes < 1:
            raise FeatureStoreError(
                f"{self.path}: regions ({num_regions}), feature dimension ({feature_dim}) and classes "
                f"({num_classes}) must be at least 1"
            )
        self.num_regions, self.feature_dim = num_regions, feature_dim
        self.num_classes = num_classes
        self._count, self._names = 0, {}
        self._validated = True
        f = self._file = h5_file(self.partial, "w")
        R, D = num_regions, feature_dim
        f.attrs.update(
            format=FORMAT_NAME,
            version=FORMAT_VERSION,
            num_classes=num_classes,
            box_format="ymin,xmin,ymax,xmax",
            count=0,
            complete=False,
        )
        for key, value in (attrs or {}).items():
            if key not in _LAYOUT_ATTRS:
                f.attrs[key] = value
        f.create_dataset("names", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(_GROW_BY,))
        f.create_dataset("features", (0, R, D), maxshape=(None, R, D), dtype=dtype, chunks=(1, R, D))
        f.create_dataset("boxes", (0, R, 4), maxshape=(None, R, 4), dtype="float32", chunks=(64, R, 4))
        f.create_dataset("classes", (0, R), maxshape=(None, R), dtype="int16", chunks=(256, R))
        f.create_dataset("scores", (0, R), maxshape=(None, R), dtype="float32", chunks=(256, R))
        f.create_dataset("num_regions", (0,), maxshape=(None,), dtype="int16", chunks=(_GROW_BY,))

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __len__(self):
        return self._count

    @property
    def names(self) -> List[str]:
        return list(self._names)

    def add(self, name: str, regions: RegionFeatures) -> None:
        if not name or name != name.strip():
            raise FeatureStoreError(f"{self.path}: bad image name {name!r}")
        if name in self._names:
            raise FeatureStoreError(f"{self.path}: image '{name}' is already in the store")
        where = f"{self.path}: image '{name}'"
        n = len(regions.classes)
        if n > self.num_regions:
            raise FeatureStoreError(
                f"{where}: {n} regions, the store holds at most {self.num_regions}"
            )
        check_regions(regions, where, self.num_classes, self.feature_dim)
        # rows are gathered and written in blocks: a row at a time, h5py's
        # per-call overhead (six datasets) was most of the writing time
        if self._block is None:
            self._block = _RowBlock(self._file, self.num_regions)
        self._block.add(name, regions)
        self._names[name] = self._count
        self._count += 1
        if self._block.full:
            self._block.flush(self._file, self._count)

    def close(self) -> None:
        """Marks the store complete and renames it into place."""
        if self._file is None:
            return
        f = self._file
        if self._block is not None:
            self._block.flush(f, self._count)
        for key in _ALL_KEYS:
            f[key].resize(self._count, axis=0)
        f.attrs["count"] = self._count
        names = encode_names(list(self._names))  # in row order
        order = np.argsort(names, kind="stable")
        _write_name_index(f, names[order], order)
        if self._validated:
            _record_validation(f, self._count, "FeatureStoreWriter")
        else:
            for key in _VALIDATION_ATTRS:
                f.attrs.pop(key, None)
        f.attrs["complete"] = True
        f.close()
        self._file = None
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.partial, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Discards what this writer wrote; an existing store stays as it was."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.partial.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _RowBlock:
    """Rows gathered for one write per dataset: the next ``ROWS`` images,
    padded to the store's region slots."""

    ROWS = 256  # 256 images of 36 x 1536 float16: 28 MB held at most

    def __init__(self, f: h5py.File, slots: int):
        self.arrays = {key: np.zeros((self.ROWS,) + f[key].shape[1:], dtype=f[key].dtype) for key in _ROW_KEYS}
        self.counts = np.zeros(self.ROWS, dtype=np.int16)
        self.names: List[str] = []
        self.slots = slots

    @property
    def full(self) -> bool:
        return len(self.names) == self.ROWS

    def add(self, name: str, regions: RegionFeatures) -> None:
        i, n = len(self.names), len(regions.classes)
        for key in _ROW_KEYS:
            self.arrays[key][i, :n] = getattr(regions, key)
            self.arrays[key][i, n:] = 0
        self.counts[i] = n
        self.names.append(name)

    def flush(self, f: h5py.File, end: int) -> None:
        """Writes the gathered rows as rows ``end - len(rows)`` to ``end``."""
        k = len(self.names)
        if not k:
            return
        start = end - k
        if end > f["names"].shape[0]:
            for key in _ALL_KEYS:
                f[key].resize(max(end, f[key].shape[0] + _GROW_BY), axis=0)
        f["names"][start:end] = np.array(self.names, dtype=object)
        for key in _ROW_KEYS:
            f[key][start:end] = self.arrays[key][:k]
        f["num_regions"][start:end] = self.counts[:k]
        self.names = []


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else name


def encode_names(names) -> np.ndarray:
    """Names as a fixed-width bytes array (UTF-8), what searchsorted compares."""
    if isinstance(names, np.ndarray) and names.dtype.kind == "S":
        return names
    out = np.array([n.encode() if isinstance(n, str) else bytes(n) for n in names], dtype=bytes)
    return out if len(out) else np.empty(0, dtype="S1")


def _write_name_index(f: h5py.File, sorted_names: np.ndarray, sorted_rows: np.ndarray) -> None:
    for key in _INDEX_KEYS:
        if key in f:
            del f[key]
    f.create_dataset("sorted_names", data=sorted_names)
    f.create_dataset("sorted_rows", data=sorted_rows.astype(np.int64))


def _record_validation(f: h5py.File, count: int, by: str) -> None:
    f.attrs.update(
        validated_version=VALIDATION_VERSION, validated_checks=VALIDATED_CHECKS, validated_count=count, validated_by=by
    )


def _validation_recorded(f: h5py.File, count: int) -> bool:
    """Whether the file records a full validation by the current checks of
    its ``count`` images, with its name index."""
    a = f.attrs
    return (
        int(a.get("validated_version", -1)) == VALIDATION_VERSION
        and _plain(a.get("validated_checks", "")) == VALIDATED_CHECKS
        and int(a.get("validated_count", -1)) == count
        and all(key in f and f[key].shape == (count,) for key in _INDEX_KEYS)
    )


def _sorted_index(names: np.ndarray, path) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted names, their rows) of a ``names`` array in row order; raises on
    an empty or a repeated name (vectorised: no Python loop over rows)."""
    names = encode_names(names)
    rows = np.argsort(names, kind="stable")
    ordered = names[rows]
    if len(ordered) and ordered[0] == b"":
        raise FeatureStoreError(f"{path}: row {rows[0]} has an empty image name")
    twice = np.nonzero(ordered[1:] == ordered[:-1])[0]
    if len(twice):
        k = twice[0]
        raise FeatureStoreError(
            f"{path}: image '{ordered[k].decode()}' is stored twice (rows {rows[k]} and {rows[k + 1]})"
        )
    return ordered, rows.astype(np.int64)


def _find_rows(sorted_names: np.ndarray, sorted_rows: np.ndarray, names) -> np.ndarray:
    """Rows of ``names`` (-1 where absent): one vectorised binary search."""
    query = encode_names(names)
    if not len(sorted_names) or not len(query):
        return np.full(len(query), -1, dtype=np.int64)
    cut = query.astype(sorted_names.dtype)  # longer names than any stored one are cut, and so absent
    pos = np.minimum(np.searchsorted(sorted_names, cut), len(sorted_names) - 1)
    found = (sorted_names[pos] == cut) & (cut == query)
    return np.where(found, sorted_rows[pos], -1)


def _first_bad_row(block: Dict[str, np.ndarray], counts: np.ndarray, num_classes: int) -> Optional[int]:
    """The first row of a block of rows with a bad value among its real
    regions (the checks of check_regions, vectorised), or None."""
    classes, boxes, scores = block["classes"], block["boxes"], block["scores"]
    real = np.arange(classes.shape[1]) < counts[:, None]
    bad = ~(np.isfinite(boxes).all(-1) & np.isfinite(scores))
    bad |= (classes < 0) | (classes >= num_classes)
    bad |= ((boxes < 0) | (boxes > 1)).any(-1) | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if "features" in block:
        bad |= ~np.isfinite(block["features"]).all(-1)
    rows = np.nonzero((bad & real).any(1))[0]
    return int(rows[0]) if len(rows) else None


def _check_layout(f: h5py.File, path) -> int:
    """Checks the tag, version, completeness and dataset shapes; returns the
    image count."""
    if f.attrs.get("format") != FORMAT_NAME:
        raise FeatureStoreError(f"{path}: not a region-feature store (no '{FORMAT_NAME}' tag)")
    version = int(f.attrs.get("version", -1))
    if version != FORMAT_VERSION:
        hint = (
            ": it may be incomplete (version 1 did not record completeness); write it again with this "
            "version (vtlm-toy-world build, vtlm-features import, vtlm-extract-features)"
            if version == 1 else ""
        )  # fmt: skip
        raise FeatureStoreError(
            f"{path}: store format version {f.attrs.get('version')}, this code reads version {FORMAT_VERSION}{hint}"
        )
    if not bool(f.attrs.get("complete", False)):
        raise FeatureStoreError(
            f"{path}: incomplete store: the command that wrote it did not finish; run it again "
            "(extraction and merges continue or start over, they never leave half a store in place)"
        )
    missing = [k for k in _ALL_KEYS if k not in f]
    if missing:
        raise FeatureStoreError(f"{path}: missing datasets {missing}")
    n = f["names"].shape[0]
    R, D = f["features"].shape[1:]
    expected = {
        "features": (n, R, D),
        "boxes": (n, R, 4),
        "classes": (n, R),
        "scores": (n, R),
        "num_regions": (n,),
    }
    for key, shape in expected.items():
        if f[key].shape != shape:
            raise FeatureStoreError(
                f"{path}: dataset '{key}' has shape {f[key].shape}, expected {shape}"
            )
    count = int(f.attrs.get("count", -1))
    if count != n:
        raise FeatureStoreError(f"{path}: records {count} images in {n} rows")
    return count


class _StoreReads:
    """Lookups and reads by name, the same for one store and for shards:
    subclasses give ``path``, ``stored_regions``, ``max_regions``,
    ``_name_lookup()`` (sorted names, their rows) and ``read_row``."""

    @property
    def num_regions(self) -> int:
        """Region slots of each image served: the store's, or max_regions."""
        return min(self.max_regions or self.stored_regions, self.stored_regions)

    @property
    def index(self) -> Dict[str, int]:
        """name -> row as a dict, built on demand (small stores, tests)."""
        return {name: row for row, name in enumerate(self.names)}

    def find_rows(self, names) -> np.ndarray:
        """Rows of the names, -1 for those not in the store (vectorised)."""
        return _find_rows(*self._name_lookup(), names)

    def forget_names(self) -> None:
        """Drops the name index (built again by the next lookup): a training
        process looks names up once per split and then reads by row; at 1M
        images the index is some 20 MB it need not hold."""
        self._lookup = None

    def __contains__(self, name: str) -> bool:
        return bool(self.find_rows([name])[0] >= 0)

    def row(self, name: str) -> int:
        row = int(self.find_rows([name])[0])
        if row < 0:
            raise FeatureStoreError(f"{self.path}: no image '{name}'")
        return row

    def read(self, name: str) -> RegionFeatures:
        return self.read_row(self.row(name))

    def rows_for(
        self, names: Sequence[str], source: str = "order file", missing: str = "fail", first_line: int = 1
    ) -> Tuple[np.ndarray, List[Tuple[int, str]]]:
        """Store rows of a list of image names (e.g. an order file's lines,
        the first of them line ``first_line``).

        missing='fail' raises on the first absent image, naming ``source`` and
        its line; 'drop' gives row -1 for absent images and returns them as
        (line, name) pairs so the caller can drop those sentence pairs."""
        if missing not in ("fail", "drop"):
            raise ValueError(f"missing must be 'fail' or 'drop', not {missing!r}")
        rows = self.find_rows(names)
        absent = [(int(i) + first_line, _text(names[i])) for i in np.nonzero(rows < 0)[0]]
        if absent and missing == "fail":
            raise self.missing_images(source, absent)
        return rows, absent

    def missing_images(self, source: str, absent: List[Tuple[int, str]]) -> "FeatureStoreError":
        """The error for images of ``source`` absent from the store: the
        first (line, name) and how many more."""
        line, name = absent[0]
        more = f" ({len(absent) - 1} more images missing)" if len(absent) > 1 else ""
        return FeatureStoreError(
            f"{source}:{line}: image '{name}' is not in {self.path}{more}; "
            "use the 'drop' policy for missing images to skip those sentence pairs"
        )


class FeatureStore(_StoreReads):
    """Read access to a store. ``validate``: 'full' scans every value, 'quick'
    checks layout, names, boxes, classes and counts (each read then checks its
    image's features), 'auto' is full below FULL_SCAN_BYTES of features;
    'auto' and 'quick' check nothing more in a store that records its
    validation (see the module's docstring): opening one reads its attributes
    and shapes only. ``max_regions``: serve the top-K regions of each image by
    detection score (``num_regions`` is then K; ``stored_regions`` the
    store's slots)."""

    def __init__(self, path, validate: str = "auto", max_regions: Optional[int] = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise FeatureStoreError(f"{self.path}: is a folder, not a feature store (.h5 file)")
        if not self.path.is_file():
            if partial_path(self.path).exists():
                raise FeatureStoreError(
                    f"{self.path}: not written yet: only the unfinished {partial_path(self.path).name} of an "
                    "interrupted writer is there; run the command that writes it again"
                )
            raise FeatureStoreError(f"{self.path}: no such feature store")
        if validate not in ("auto", "full", "quick", "none"):
            raise ValueError(f"validate must be auto, full, quick or none: {validate}")
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        self._datasets: Dict[str, h5py.Dataset] = {}
        self._fd: Optional[int] = None
        # row layouts (chunk_reads), read once by prepare_reads
        self._layouts: Optional[Dict[str, Optional[DirectRows]]] = None
        # loaded on first use, in each process: the name index, the region
        # counts (2 bytes per image) and the list of names
        self._lookup: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._counts: Optional[np.ndarray] = None
        self._names: Optional[List[str]] = None
        try:
            with h5_file(self.path) as f:
                self._count = _check_layout(f, self.path)
                self.stored_regions, self.feature_dim = f["features"].shape[1:]
                self.dtype = f["features"].dtype
                self.num_classes = int(f.attrs["num_classes"])
                self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
                self.validated = _validation_recorded(f, self._count)
        except OSError as e:
            raise FeatureStoreError(f"{self.path}: cannot be read as HDF5 ({e})") from None
        if max_regions is not None and max_regions < 1:
            raise FeatureStoreError(f"--max-regions must be at least 1, not {max_regions}")
        self.max_regions = max_regions
        feature_bytes = self._count * self.stored_regions * self.feature_dim * self.dtype.itemsize
        if self.validated and validate in ("auto", "quick"):
            validate = "none"
        elif validate == "auto":
            validate = "full" if feature_bytes <= FULL_SCAN_BYTES else "quick"
            if validate == "quick":
                logger.info(
                    "%s: %.1f GB of features, not validated: NaN/inf checked per read; run "
                    "'vtlm-features validate' once for a full scan (recorded in the store)",
                    self.path, feature_bytes / 1e9,
                )  # fmt: skip
        if validate != "none":
            self.validate(scan_features=validate == "full")
        self._features_checked = self.validated or validate == "full"

    # -- reads --
    def prepare_reads(self) -> None:
        """Reads what reading rows needs from HDF5, once: the region counts
        and each dataset's row layout (chunk_reads). Rows are then read with
        one pread each, without any HDF5 call, also in DataLoader workers
        (which inherit or unpickle this); only layouts chunk_reads cannot
        serve are read through HDF5. The chunk index is read with the file
        open and the file closed after: kept open, HDF5's metadata cache
        would hold it at some 400 bytes an image of every shard read."""
        if self._layouts is not None:
            return
        with h5_file(self.path) as f:
            self._counts = f["num_regions"][: self._count] if self._counts is None else self._counts
            self._layouts = {key: DirectRows.of(f[key]) for key in _ROW_KEYS}

    def _descriptor(self) -> int:
        """This process's file descriptor of the store."""
        if self._fd is None or self._pid != os.getpid():
            self._pid, self._file, self._datasets = os.getpid(), None, {}
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def _hdf5_rows(self, key: str) -> h5py.Dataset:
        """A dataset read through HDF5 (layouts chunk_reads cannot serve)."""
        if self._file is None:
            self._file = h5_file(self.path)
            # looked up once: h5py's lookup by name costs several times a row's read
            self._datasets = {k: self._file[k] for k in _ROW_KEYS}
        return self._datasets[key]

    def _rows(self, key: str, row: int, n: int) -> np.ndarray:
        """The first n entries of a row of a dataset."""
        layout = self._layouts[key]
        if layout is not None:
            out = layout.read(self._fd, row, n)
            if out is not None:
                return out
        return self._hdf5_rows(key)[row, :n]

    @property
    def is_open(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def close(self):
        if self.is_open:
            if self._file is not None:
                self._file.close()
            os.close(self._fd)
        self._file, self._fd = None, None
        self._datasets = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        # handles stay behind; the row layouts and region counts travel (a
        # DataLoader worker reads rows without calling HDF5)
        state.update(_file=None, _pid=None, _datasets={}, _fd=None, _lookup=None, _names=None)
        return state

    # -- lookup --
    def __len__(self):
        return self._count

    @property
    def region_counts(self) -> np.ndarray:
        """Real regions of each row (the store's, before max_regions)."""
        if self._counts is None:
            with h5_file(self.path) as f:
                self._counts = f["num_regions"][: self._count]
        return self._counts

    @property
    def names(self) -> List[str]:
        """Every name in row order: read from the file on first use (O(images);
        lookups do not need it)."""
        if self._names is None:
            with h5_file(self.path) as f:
                self._names = list(f["names"].asstr()[: self._count])
        return self._names

    def _name_lookup(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._lookup is None:
            with h5_file(self.path) as f:
                if self.validated:
                    self._lookup = (f["sorted_names"][:], f["sorted_rows"][:])
                else:  # built and checked from the names
                    self._lookup = _sorted_index(f["names"][: self._count], self.path)
        return self._lookup

    def read_row(self, row: int) -> RegionFeatures:
        self.prepare_reads()
        self._descriptor()
        n = int(self.region_counts[row])
        k = self.num_regions
        scores = self._rows("scores", row, n)
        if n > k:  # the top k by score: a prefix when the detector stored them by score
            keep = np.sort(np.argsort(-scores, kind="stable")[:k])
            if keep[-1] == k - 1:
                n, keep = k, slice(None)
            scores = scores[:k] if n == k else scores[keep]
        else:
            keep = slice(None)
        regions = RegionFeatures(
            features=self._rows("features", row, n)[keep],
            boxes=self._rows("boxes", row, n)[keep],
            classes=self._rows("classes", row, n)[keep],
            scores=scores,
        )
        if not self._features_checked and not np.isfinite(regions.features).all():
            raise FeatureStoreError(f"{self.path}: image '{self._name_of(row)}': features contain NaN or inf")
        return regions

    def _name_of(self, row: int) -> str:
        with h5_file(self.path) as f:
            return f["names"].asstr()[row]

    # -- checks --
    def validate(self, scan_features: bool = True, record: bool = False) -> None:
        """Checks the names and every row (features too if ``scan_features``),
        in blocks of bounded memory; ``record`` writes the result into the
        file (a full scan only), so that later opens skip the checks."""
        with h5_file(self.path) as f:
            lookup = _sorted_index(f["names"][: self._count], self.path)
            counts = f["num_regions"][: self._count]
            R = self.stored_regions
            bad = np.nonzero((counts < 0) | (counts > R))[0]
            if len(bad):
                raise FeatureStoreError(
                    f"{self.path}: image '{self._name_of(bad[0])}': num_regions {counts[bad[0]]} outside [0, {R}]"
                )
            keys = ("boxes", "classes", "scores") + (("features",) if scan_features else ())
            step = _SCAN_ROWS
            if scan_features:
                step = max(1, min(_SCAN_ROWS, _SCAN_BYTES // (R * self.feature_dim * self.dtype.itemsize)))
            for start in range(0, self._count, step):
                block = {key: f[key][start : start + step] for key in keys}
                k = _first_bad_row(block, counts[start : start + step], self.num_classes)
                if k is not None:
                    n = counts[start + k]
                    row_regions = RegionFeatures(
                        features=block["features"][k, :n] if scan_features else np.zeros((n, self.feature_dim)),
                        boxes=block["boxes"][k, :n], classes=block["classes"][k, :n], scores=block["scores"][k, :n],
                    )  # fmt: skip
                    where = f"{self.path}: image '{self._name_of(start + k)}'"
                    check_regions(row_regions, where, self.num_classes, self.feature_dim)
                    raise FeatureStoreError(f"{where}: a bad value")  # check_regions names it; not reached
                del block  # freed before the next block is read
        self._lookup, self._counts = lookup, counts
        if record and scan_features and not self.validated:
            try:
                with h5_file(self.path, "r+") as f:
                    _write_name_index(f, *lookup)
                    _record_validation(f, self._count, "vtlm-features validate")
                self.validated = True
            except OSError as e:
                logger.warning("%s: valid, but the validation could not be recorded (%s): opens check it", self.path, e)
            self._features_checked = True

    def summary(self) -> Dict[str, object]:
        return _summary(self, self.region_counts, self.path.stat().st_size)


def _summary(store, counts: np.ndarray, size: int, **extra) -> Dict[str, object]:
    return {
        "path": str(store.path),
        **extra,
        "images": len(store),
        "region_slots": int(store.stored_regions),
        "feature_dim": int(store.feature_dim),
        "dtype": str(store.dtype),
        "num_classes": store.num_classes,
        "regions_per_image": {
            "min": int(counts.min()) if len(counts) else 0,
            "mean": float(counts.mean()) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0,
        },
        "validated": store.validated,
        "bytes": size,
        "attrs": store.attrs,
    }


class ShardedFeatureStore(_StoreReads):
    """Several stores (e.g. the shards of an extraction) read as one, with
    FeatureStore's read interface: rows run through the shards in order. Each
    shard opens as a FeatureStore (O(1) when validated); the shards' sorted
    name indexes are merged into one on the first lookup (numpy, about 0.1 s
    per million names), which also refuses an image in two shards. A process
    keeps at most MAX_OPEN_SHARDS files open."""

    def __init__(self, paths: Sequence, validate: str = "auto", max_regions: Optional[int] = None, spec=None):
        if not paths:
            raise FeatureStoreError(f"{spec}: no feature stores")
        self.shards = [FeatureStore(p, validate=validate, max_regions=max_regions) for p in paths]
        self.path = spec if spec is not None else ",".join(str(p) for p in paths)
        first = self.shards[0]
        for shard in self.shards[1:]:
            _check_same_layout(shard, first)
        self.stored_regions, self.feature_dim = first.stored_regions, first.feature_dim
        self.num_classes, self.dtype, self.max_regions = first.num_classes, first.dtype, max_regions
        self.attrs = first.attrs
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self._starts = self.offsets[:-1].tolist()
        self._lookup: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._open: "OrderedDict[int, None]" = OrderedDict()  # shards with a handle open, oldest first

    @property
    def validated(self) -> bool:
        return all(s.validated for s in self.shards)

    def __len__(self):
        return int(self.offsets[-1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_lookup=None, _open=OrderedDict())
        return state

    @property
    def names(self) -> List[str]:
        return [name for shard in self.shards for name in shard.names]

    def _name_lookup(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._lookup is None:
            parts = [shard._name_lookup() for shard in self.shards]
            names = np.concatenate([n for n, _ in parts])
            rows = np.concatenate([r + offset for (_, r), offset in zip(parts, self.offsets)])
            order = np.argsort(names, kind="stable")
            names, rows = names[order], rows[order]
            twice = np.nonzero(names[1:] == names[:-1])[0]
            if len(twice):
                a, b = (self._shard_of(int(rows[i])) for i in (twice[0], twice[0] + 1))
                raise FeatureStoreError(
                    f"{self.shards[b].path}: image '{names[twice[0]].decode()}' is also in {self.shards[a].path}"
                )
            self._lookup = names, rows
            for shard in self.shards:  # the merged index replaces theirs
                shard._lookup = None
        return self._lookup

    def prepare_reads(self) -> None:
        """Every shard's (FeatureStore.prepare_reads): about 1 us an image."""
        for shard in self.shards:
            shard.prepare_reads()

    def _shard_of(self, row: int) -> int:
        return bisect.bisect_right(self._starts, row) - 1  # a Python list: faster than numpy for one row

    def read_row(self, row: int) -> RegionFeatures:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside the {len(self)} images of {self.path}")
        k = self._shard_of(row)
        shard = self.shards[k]
        if k in self._open and shard.is_open:
            self._open.move_to_end(k)
        else:
            self._open.pop(k, None)
            self._open[k] = None
            while len(self._open) > MAX_OPEN_SHARDS:
                self.shards[self._open.popitem(last=False)[0]].close()
        return shard.read_row(row - int(self.offsets[k]))

    def close(self):
        for shard in self.shards:
            shard.close()
        self._open.clear()

    def validate(self, scan_features: bool = True, record: bool = False) -> None:
        for shard in self.shards:
            shard.validate(scan_features, record)
        self._lookup = None
        self._name_lookup()  # no image in two shards

    def summary(self) -> Dict[str, object]:
        counts = np.concatenate([s.region_counts for s in self.shards])
        size = sum(s.path.stat().st_size for s in self.shards)
        return _summary(self, counts, size, shards=[str(s.path) for s in self.shards])


AnyFeatureStore = Union[FeatureStore, ShardedFeatureStore]
MANIFEST_SUFFIX = ".txt"


def _check_same_layout(store: FeatureStore, first: FeatureStore) -> None:
    mine = (store.stored_regions, store.feature_dim, store.num_classes)
    theirs = (first.stored_regions, first.feature_dim, first.num_classes)
    if mine != theirs:
        raise FeatureStoreError(
            f"{store.path}: R={mine[0]}, D={mine[1]}, classes={mine[2]} differ from {first.path}"
        )


def store_paths(spec) -> List[Path]:
    """The store files of a --region-features spec: a store file, a folder
    (its ``*.h5``, sorted), a ``.txt`` manifest (one store or folder per line,
    relative to the manifest's folder; blank lines and ``#`` comments skipped)
    or a comma-separated list of these."""
    spec = str(spec)
    parts = [spec] if os.path.exists(spec) or "," not in spec else [p.strip() for p in spec.split(",") if p.strip()]
    paths: List[Path] = []
    for part in parts:
        path = Path(part)
        if path.is_dir():
            found = sorted(path.glob("*.h5"))
            if not found:
                raise FeatureStoreError(f"{path}: a folder without feature stores (*.h5)")
            paths += found
        elif path.suffix == MANIFEST_SUFFIX:
            if not path.is_file():
                raise FeatureStoreError(f"{path}: no such manifest of feature stores")
            for number, line in enumerate(path.read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    entry = path.parent / line
                    if not entry.exists():
                        raise FeatureStoreError(f"{path}:{number}: no such feature store: {entry}")
                    paths += store_paths(entry)
        else:
            paths.append(path)
    if not paths:
        raise FeatureStoreError(f"{spec}: names no feature store")
    return paths


def store_exists(spec) -> bool:
    """Whether every store a --region-features spec names is there."""
    try:
        return all(p.is_file() for p in store_paths(spec))
    except FeatureStoreError:
        return False


def open_store(spec, validate: str = "auto", max_regions: Optional[int] = None) -> AnyFeatureStore:
    """Opens a --region-features spec (see store_paths): one FeatureStore, or
    a ShardedFeatureStore over several."""
    paths = store_paths(spec)
    if len(paths) == 1:
        return FeatureStore(paths[0], validate=validate, max_regions=max_regions)
    return ShardedFeatureStore(paths, validate=validate, max_regions=max_regions, spec=str(spec))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def merge_stores(
    inputs: Iterable, output, dtype: Optional[str] = None, force: bool = False, attrs: Optional[Dict[str, str]] = None
) -> int:
    """Concatenates stores (e.g. extraction shards) into one; an image present
    in two inputs is an error. The output appears only when complete (a
    failed merge leaves nothing); an existing output is refused unless
    ``force``, an output that is also an input always. Returns the number
    of images written."""
    output = Path(output)
    paths = [path for spec in inputs for path in store_paths(spec)]
    if not paths:
        raise FeatureStoreError("no stores to merge")
    for path in paths:
        if _same_file(path, output):
            raise FeatureStoreError(f"{output}: the output is also an input; write the merge to another file")
    seen = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise FeatureStoreError(f"{path}: given twice as an input (as {seen[key]} too)")
        seen[key] = path
    if output.is_dir():
        raise FeatureStoreError(f"{output}: is a folder; give the merged store's file name")
    if output.exists() and not force:
        raise FeatureStoreError(f"{output}: exists already; use --force to replace it")
    stores = [FeatureStore(p, validate="quick") for p in paths]
    first = stores[0]
    for store in stores[1:]:
        _check_same_layout(store, first)
    if attrs is None:  # the first input's provenance (source, detector, ...)
        attrs = {k: v for k, v in first.attrs.items() if k not in _LAYOUT_ATTRS}
    with FeatureStoreWriter(
        output,
        num_regions=first.stored_regions,
        feature_dim=first.feature_dim,
        dtype=dtype or str(first.dtype),
        num_classes=first.num_classes,
        overwrite=True,
        attrs=attrs,
    ) as writer:
        for store in stores:
            for row, name in enumerate(store.names):
                if name in writer:
                    raise FeatureStoreError(
                        f"{store.path}: image '{name}' is also in an earlier input"
                    )
                writer.add(name, store.read_row(row))
            store.close()
        return len(writer)

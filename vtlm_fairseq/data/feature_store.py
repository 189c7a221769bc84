"""The region-feature store: one HDF5 file per corpus, one row per image.

Layout (N images, R region slots, D feature dims):

- ``names``       (N,)       UTF-8 image names
- ``features``    (N, R, D)  float16 (default) or float32, chunked per image
- ``boxes``       (N, R, 4)  float32 ``[ymin, xmin, ymax, xmax]`` in [0, 1]
- ``classes``     (N, R)     int16 detector class ids in ``[0, num_classes)``
- ``scores``      (N, R)     float32 detection scores
- ``num_regions`` (N,)       int16 regions actually present; rows past it are padding

Reads open the file lazily in each process, so a store can be shared by
DataLoader workers (h5py handles must not cross a fork).
"""

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ..errors import InputError

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
# attributes the writer sets itself
_LAYOUT_ATTRS = ("format", "version", "num_classes", "box_format", "count", "complete")


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
    before it is written."""

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
        if self.path.is_dir():
            raise FeatureStoreError(f"{self.path}: is a folder, not a store file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            logger.warning("%s: removing the incomplete store of an interrupted writer", self.partial)
            self.partial.unlink()
        if append and self.path.exists():
            FeatureStore(self.path, validate="none")  # complete and well-formed, or an error
            shutil.copyfile(self.path, self.partial)
            self._file = h5py.File(self.partial, "a")
            self._count = _check_layout(self._file, self.path)
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
        f = self._file = h5py.File(self.partial, "w")
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
        f, i = self._file, self._count
        if i >= f["names"].shape[0]:
            for key in _ALL_KEYS:
                f[key].resize(i + _GROW_BY, axis=0)
        R = self.num_regions
        f["names"][i] = name
        f["features"][i] = _pad(regions.features, R)
        f["boxes"][i] = _pad(regions.boxes, R)
        f["classes"][i] = _pad(regions.classes, R)
        f["scores"][i] = _pad(regions.scores, R)
        f["num_regions"][i] = n
        self._names[name] = i
        self._count = i + 1

    def close(self) -> None:
        """Marks the store complete and renames it into place."""
        if self._file is None:
            return
        f = self._file
        for key in _ALL_KEYS:
            f[key].resize(self._count, axis=0)
        f.attrs["count"] = self._count
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


def _pad(array: np.ndarray, rows: int) -> np.ndarray:
    if len(array) == rows:
        return array
    out = np.zeros((rows,) + array.shape[1:], dtype=array.dtype)
    out[: len(array)] = array
    return out


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


class FeatureStore:
    """Read access to a store. ``validate``: 'full' scans every value, 'quick'
    checks layout, names, boxes, classes and counts (each read then checks its
    image's features), 'auto' is full below FULL_SCAN_BYTES of features."""

    def __init__(self, path, validate: str = "auto"):
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
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        self._datasets: Dict[str, h5py.Dataset] = {}
        try:
            with h5py.File(self.path, "r") as f:
                count = _check_layout(f, self.path)
                self.num_regions, self.feature_dim = f["features"].shape[1:]
                self.dtype = f["features"].dtype
                self.num_classes = int(f.attrs["num_classes"])
                self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
                self.names: List[str] = list(f["names"].asstr()[:count])
                # 2 bytes per image, kept so that a read is one HDF5 call per array
                self.region_counts: np.ndarray = f["num_regions"][:count]
                feature_bytes = count * self.num_regions * self.feature_dim * self.dtype.itemsize
        except OSError as e:
            raise FeatureStoreError(f"{self.path}: cannot be read as HDF5 ({e})") from None
        self.index: Dict[str, int] = {}
        for row, name in enumerate(self.names):
            if not name:
                raise FeatureStoreError(f"{self.path}: row {row} has an empty image name")
            if name in self.index:
                raise FeatureStoreError(
                    f"{self.path}: image '{name}' is stored twice (rows "
                    f"{self.index[name]} and {row})"
                )
            self.index[name] = row
        if validate == "auto":
            validate = "full" if feature_bytes <= FULL_SCAN_BYTES else "quick"
            if validate == "quick":
                logger.info(
                    "%s: %.1f GB of features: NaN/inf checked per read; run "
                    "'vtlm-features validate' for a full scan",
                    self.path,
                    feature_bytes / 1e9,
                )
        if validate in ("full", "quick"):
            self.validate(scan_features=validate == "full")
        elif validate != "none":
            raise ValueError(f"validate must be auto, full, quick or none: {validate}")
        self._features_checked = validate == "full"

    # -- file handle, per process --
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            # looked up once: h5py's lookup by name costs several times a row's read
            self._datasets = {key: self._file[key] for key in _ROW_KEYS}
        return self._file

    def close(self):
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._datasets = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        return state

    # -- lookup --
    def __len__(self):
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def row(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise FeatureStoreError(f"{self.path}: no image '{name}'") from None

    def read_row(self, row: int) -> RegionFeatures:
        self._h5()
        d = self._datasets
        n = int(self.region_counts[row])
        regions = RegionFeatures(
            features=d["features"][row, :n],
            boxes=d["boxes"][row, :n],
            classes=d["classes"][row, :n],
            scores=d["scores"][row, :n],
        )
        if not self._features_checked and not np.isfinite(regions.features).all():
            raise FeatureStoreError(
                f"{self.path}: image '{self.names[row]}': features contain NaN or inf"
            )
        return regions

    def read(self, name: str) -> RegionFeatures:
        return self.read_row(self.row(name))

    def rows_for(
        self, names: Sequence[str], source: str = "order file", missing: str = "fail"
    ) -> Tuple[np.ndarray, List[Tuple[int, str]]]:
        """Store rows of a list of image names (e.g. an order file's lines).

        missing='fail' raises on the first absent image, naming ``source`` and
        its line; 'drop' gives row -1 for absent images and returns them as
        (line, name) pairs so the caller can drop those sentence pairs."""
        if missing not in ("fail", "drop"):
            raise ValueError(f"missing must be 'fail' or 'drop', not {missing!r}")
        rows = np.empty(len(names), dtype=np.int64)
        absent = []
        for i, name in enumerate(names):
            row = self.index.get(name, -1)
            rows[i] = row
            if row < 0:
                absent.append((i + 1, name))
        if absent and missing == "fail":
            line, name = absent[0]
            more = f" ({len(absent) - 1} more images missing)" if len(absent) > 1 else ""
            raise FeatureStoreError(
                f"{source}:{line}: image '{name}' is not in {self.path}{more}; "
                "use the 'drop' policy for missing images to skip those sentence pairs"
            )
        return rows, absent

    # -- checks --
    def validate(self, scan_features: bool = True) -> None:
        with h5py.File(self.path, "r") as f:
            n_all = f["num_regions"][: len(self.names)]
            bad = np.nonzero((n_all < 0) | (n_all > self.num_regions))[0]
            if len(bad):
                raise FeatureStoreError(
                    f"{self.path}: image '{self.names[bad[0]]}': num_regions "
                    f"{n_all[bad[0]]} outside [0, {self.num_regions}]"
                )
            step = _SCAN_ROWS
            if scan_features:
                row_bytes = self.num_regions * self.feature_dim * self.dtype.itemsize
                step = max(1, min(_SCAN_ROWS, _SCAN_BYTES // row_bytes))
            for start in range(0, len(self.names), step):
                stop = min(start + step, len(self.names))
                block = {
                    key: f[key][start:stop]
                    for key in ("boxes", "classes", "scores")
                    + (("features",) if scan_features else ())
                }
                for row in range(start, stop):
                    n = n_all[row]
                    k = row - start
                    regions = RegionFeatures(
                        features=block["features"][k, :n]
                        if scan_features
                        else np.zeros((n, self.feature_dim), np.float32),
                        boxes=block["boxes"][k, :n],
                        classes=block["classes"][k, :n],
                        scores=block["scores"][k, :n],
                    )
                    check_regions(
                        regions,
                        f"{self.path}: image '{self.names[row]}'",
                        self.num_classes,
                        self.feature_dim,
                    )
                del block, regions  # freed before the next block is read

    def summary(self) -> Dict[str, object]:
        with h5py.File(self.path, "r") as f:
            counts = f["num_regions"][: len(self.names)]
        return {
            "path": str(self.path),
            "images": len(self.names),
            "region_slots": int(self.num_regions),
            "feature_dim": int(self.feature_dim),
            "dtype": str(self.dtype),
            "num_classes": self.num_classes,
            "regions_per_image": {
                "min": int(counts.min()) if len(counts) else 0,
                "mean": float(counts.mean()) if len(counts) else 0.0,
                "max": int(counts.max()) if len(counts) else 0,
            },
            "bytes": self.path.stat().st_size,
            "attrs": self.attrs,
        }


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
    paths = [Path(p) for p in inputs]
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
        if (store.num_regions, store.feature_dim, store.num_classes) != (
            first.num_regions,
            first.feature_dim,
            first.num_classes,
        ):
            raise FeatureStoreError(
                f"{store.path}: R={store.num_regions}, D={store.feature_dim}, "
                f"classes={store.num_classes} differ from {first.path}"
            )
    if attrs is None:  # the first input's provenance (source, detector, ...)
        attrs = {k: v for k, v in first.attrs.items() if k not in _LAYOUT_ATTRS}
    with FeatureStoreWriter(
        output,
        num_regions=first.num_regions,
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

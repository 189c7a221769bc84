"""The reference code's feature layout (one pickle per image, as written by its
TensorFlow extraction script) to and from our HDF5 store."""

import logging
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..data.feature_store import (
    DEFAULT_NUM_CLASSES,
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    RegionFeatures,
    open_store,
    top_regions,
)

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pkl", ".pickle")
PICKLE_KEYS = (
    "detection_features",
    "detection_boxes",
    "detection_classes",
    "detection_scores",
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Feature pickles hold numpy arrays and numbers; refuse anything else so
    that importing downloaded features cannot run arbitrary code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "int"),
        ("builtins", "float"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def image_name_of(path: Path) -> str:
    """``1000092795.jpg.pkl`` -> ``1000092795.jpg``; ``toyimg_A_000.pkl`` -> ``toyimg_A_000``."""
    for suffix in PICKLE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def load_reference_pickle(path: Path, top: Optional[int] = None) -> RegionFeatures:
    """One reference pickle as RegionFeatures (the first ``num_detections``
    regions, of them the ``top`` of highest score); raises ValueError saying
    what is wrong."""
    with open(path, "rb") as f:
        data = _NumpyOnlyUnpickler(f).load()
    if not isinstance(data, dict):
        raise ValueError(f"holds a {type(data).__name__}, not a dict")
    missing = [k for k in PICKLE_KEYS if k not in data]
    if missing:
        raise ValueError(f"missing keys {missing}")
    feats = np.asarray(data["detection_features"], dtype=np.float32)
    if feats.ndim == 4:  # unpooled (n, h, w, D) maps: pool over space
        feats = feats.mean(axis=(1, 2))
    if feats.ndim != 2:
        raise ValueError(f"detection_features has shape {feats.shape}, expected (regions, dims)")
    boxes = np.asarray(data["detection_boxes"], dtype=np.float32)
    classes = np.asarray(data["detection_classes"]).astype(np.int64)
    scores = np.asarray(data["detection_scores"], dtype=np.float32)
    n = int(np.asarray(data.get("num_detections", len(feats))).reshape(-1)[0])
    available = min(len(feats), len(boxes), len(classes), len(scores))
    if not 0 <= n <= available:
        # a negative count would slice from the end and keep the wrong regions
        raise ValueError(f"num_detections {n} outside [0, {available}] (the detections the file holds)")
    regions = RegionFeatures(features=feats[:n], boxes=boxes[:n], classes=classes[:n], scores=scores[:n])
    return regions if top is None else top_regions(regions, top)


@dataclass
class ImportReport:
    imported: int = 0
    skipped_present: int = 0
    truncated: int = 0  # images with more regions than the store's slots
    region_slots: int = 0
    broken: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    missing: List[Tuple[str, int, str]] = field(default_factory=list)  # (order, line, name)

    def lines(self) -> List[str]:
        out = [
            f"imported {self.imported} images, {self.skipped_present} already in the store, "
            f"{len(self.broken)} broken files, {len(self.missing)} images named in order "
            "files but without a pickle"
        ]
        if self.truncated:
            out.append(
                f"{self.truncated} images held more than {self.region_slots} regions: their top "
                f"{self.region_slots} by score were kept (--num-regions to keep more)"
            )
        out += [f"broken: {path}: {reason}" for path, reason in self.broken]
        out += [f"missing: {order}:{line}: {name}" for order, line, name in self.missing]
        return out


def _shape_of(path: Path) -> Optional[Tuple[int, int]]:
    """(feature dimension, regions) of a pickle, None if it is broken."""
    try:
        regions = load_reference_pickle(path)
    except Exception:
        return None
    return int(regions.features.shape[1]), len(regions)


def sample_layout(files: Sequence[Path], sample: int = 64) -> Tuple[int, int]:
    """(the feature dimension most of the pickles have, the most regions one
    of them holds) from up to ``sample`` files spread over the list: one odd
    file early in sort order must not decide the dimension and turn every
    correct file away. One extraction gives every image the same number of
    detections at most, so a sample finds it."""
    step = max(1, len(files) // sample)
    shapes = [s for s in map(_shape_of, files[::step][:sample]) if s is not None]
    if not shapes:
        shapes = [s for s in map(_shape_of, files) if s is not None]
    if not shapes:
        raise FeatureStoreError(f"{files[0].parent}: no readable pickle")
    dims = Counter(d for d, _ in shapes)
    if len(dims) > 1:
        logger.warning(
            "%s: pickles with different feature dimensions (%s); importing the %d-dim ones",
            files[0].parent, ", ".join(f"{d}: {c} sampled" for d, c in dims.most_common()), dims.most_common(1)[0][0],
        )  # fmt: skip
    dim = dims.most_common(1)[0][0]
    return dim, max(1, max(n for d, n in shapes if d == dim))


def import_reference_pickles(
    pickle_dir,
    store_path,
    num_regions: Optional[int] = None,
    dtype: str = "float16",
    num_classes: int = DEFAULT_NUM_CLASSES,
    order_files: Iterable = (),
    append: bool = False,
    feature_dim: Optional[int] = None,
    overwrite: bool = False,
) -> ImportReport:
    """Imports every ``*.pkl``/``*.pickle`` of pickle_dir. Broken files
    (and files of another feature dimension than ``feature_dim``, by default
    that of most files) are reported and skipped; order files, if given, are
    checked for images without a pickle. With ``append``, images already
    stored are skipped. ``num_regions``: the store's region slots (an image
    with more keeps its top ones by score); by default the most regions a
    sample of the pickles holds (an appended store keeps its own). The store
    appears only when the import is complete."""
    from ..text.corpus import read_order_file

    if not Path(pickle_dir).is_dir():
        raise FeatureStoreError(f"{pickle_dir}: no such folder of pickles")
    if num_regions is not None and num_regions < 1:
        raise FeatureStoreError(f"--num-regions must be at least 1, not {num_regions}")
    files = sorted(
        p for p in Path(pickle_dir).iterdir() if p.name.endswith(PICKLE_SUFFIXES)
    )
    if not files:
        raise FeatureStoreError(f"{pickle_dir}: no .pkl or .pickle files")
    if append and Path(store_path).exists():
        num_regions = FeatureStore(store_path, validate="none").stored_regions
    elif feature_dim is None or num_regions is None:
        sampled_dim, sampled_regions = sample_layout(files)
        feature_dim = feature_dim or sampled_dim
        num_regions = num_regions or sampled_regions
        logger.info("%s: %d region slots, %d-dim features (from the pickles)", pickle_dir, num_regions, feature_dim)
    report = ImportReport(region_slots=num_regions)
    writer = None
    try:
        for path in files:
            name = image_name_of(path)
            if writer is not None and name in writer:
                report.skipped_present += 1
                continue
            try:
                regions = load_reference_pickle(path)
            except Exception as e:  # any unreadable file is reported, never fatal
                report.broken.append((str(path), f"{type(e).__name__}: {e}"))
                continue
            held = len(regions)
            regions = top_regions(regions, num_regions)
            if writer is None:
                writer = FeatureStoreWriter(
                    store_path,
                    num_regions=num_regions,
                    feature_dim=feature_dim or regions.features.shape[1],
                    dtype=dtype,
                    num_classes=num_classes,
                    append=append,
                    overwrite=overwrite,
                    attrs={"source": f"reference pickles from {pickle_dir}"},
                )
                if name in writer:
                    report.skipped_present += 1
                    continue
            try:
                writer.add(name, regions)
            except FeatureStoreError as e:
                report.broken.append((str(path), str(e).split(": ", 1)[-1]))
                continue
            report.imported += 1
            report.truncated += held > num_regions
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None and report.imported == 0 and not append:
        writer.abort()
        first = f"; the first: {report.broken[0][0]}: {report.broken[0][1]}" if report.broken else ""
        raise FeatureStoreError(f"{pickle_dir}: no pickle could be imported ({len(report.broken)} broken){first}")
    if writer is not None:
        writer.close()
    if writer is None:
        raise FeatureStoreError(f"{pickle_dir}: no readable pickle ({len(report.broken)} broken)")
    store = FeatureStore(store_path, validate="quick")
    for order in order_files:
        _, absent = store.rows_for(read_order_file(order), str(order), missing="drop")
        report.missing += [(str(order), line, name) for line, name in absent]
    return report


def export_reference_pickles(store_path, names: Iterable[str], out_dir) -> List[Path]:
    """Writes the named images as reference-format pickles (float32), for
    inspection or for tools that read the reference layout."""
    store = open_store(store_path, validate="none")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FeatureStoreError(f"{out_dir}: is a file, not a folder for the pickles")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        r = store.read(name)
        path = out_dir / f"{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump(
                {
                    "detection_features": r.features.astype(np.float32),
                    "detection_boxes": r.boxes.astype(np.float32),
                    "detection_classes": r.classes.astype(np.uint16),
                    "detection_scores": r.scores.astype(np.float32),
                    "num_detections": len(r),
                },
                f,
            )
        written.append(path)
    return written

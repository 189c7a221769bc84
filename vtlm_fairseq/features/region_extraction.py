"""Region features from a TensorFlow 2 object detector, written straight into
a region-feature store (``feature_store.py``).

The detector is a SavedModel with the output signature of the TF Object
Detection API: ``detection_boxes`` (B, N, 4) normalised ``[ymin, xmin, ymax,
xmax]``, ``detection_scores`` (B, N), ``detection_classes`` (B, N) float
class ids that start at the detector's background offset, ``num_detections``
(B,), and ``detection_features``, either per-region maps (B, N, h, w, C) or
already pooled (B, N, C). The paper's detector (Faster R-CNN
Inception-ResNet-v2 on OpenImages v4) must be re-exported to output the
features; see the README.

TensorFlow is imported only when a detector is loaded or an image decoded, so
the plugin (and everything else in this package) works without it.
"""

import json
import logging
import os
import queue
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..text.corpus import CorpusError, image_file_name, read_lines
from ..data.feature_store import DEFAULT_NUM_CLASSES, FeatureStoreError, RegionFeatures
from .resumable_store import ResumableStoreBuilder

logger = logging.getLogger(__name__)

REQUIRED_OUTPUTS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "detection_features",
)
# Why an image has no features; the keys of the failure report.
FAILURE_REASONS = ("missing", "unreadable", "too_small", "detector_error", "bad_output")
INSTALL_HINT = (
    "pip install 'vtlm-fairseq[extract]' (tensorflow-cpu), or tensorflow[and-cuda] "
    "of the same version for GPUs"
)


class ExtractionError(InputError):
    """A problem with the whole run (image list, detector, store), as opposed
    to one image, which is reported and skipped."""


# -- image list and shards --


@dataclass(frozen=True)
class ImageEntry:
    name: str  # the store name: the image file name as listed, relative to the image folder
    line: int  # line of the image list, for messages and the failure report


@dataclass
class ImageList:
    entries: List[ImageEntry]
    duplicates: int
    blank_lines: int


def read_image_list(path) -> ImageList:
    """One image file name per line, relative to the image folder. Blank lines
    are skipped; a repeated name is extracted once (its first line counts), so
    that shards never share an image. A COCO ``#caption`` suffix, as in
    Multi30k's test_2017_mscoco list, is removed, as in order files."""
    try:
        lines = read_lines(path, allow_empty=True)
    except CorpusError as e:
        raise ExtractionError(str(e)) from None
    entries, seen = [], set()
    duplicates = blank = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        if line != line.strip() or any(c.isspace() for c in line):
            raise ExtractionError(f"{path}:{lineno}: image name contains whitespace: {line!r}")
        name = image_file_name(line)
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise ExtractionError(
                f"{path}:{lineno}: image names are relative to --image-dir, not {name!r}"
            )
        if name in seen:
            duplicates += 1
            continue
        seen.add(name)
        entries.append(ImageEntry(name, lineno))
    if not entries:
        raise ExtractionError(f"{path}: no image names")
    return ImageList(entries, duplicates, blank)


def shard_entries(entries: Sequence[ImageEntry], num_shards: int, shard_id: int) -> List[ImageEntry]:
    """Shard ``shard_id`` of ``num_shards``: every num_shards-th unique name,
    starting at position shard_id. Round robin rather than contiguous blocks,
    so that shards get similar work when the list is ordered by source or size."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ExtractionError(f"shard id {shard_id} is not in [0, {num_shards})")
    return list(entries[shard_id::num_shards])


# -- TensorFlow and the detector --


_tensorflow_configured = False


def import_tensorflow():
    """TensorFlow, imported on first use only. Its C++ log stays at errors
    (it warns once per failed image otherwise); the devices it found are
    logged instead."""
    global _tensorflow_configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ExtractionError(f"region extraction needs TensorFlow 2 ({e}): {INSTALL_HINT}") from None
    if not _tensorflow_configured:
        # Grow GPU memory on demand instead of taking all of it up front, so
        # that several extraction shards can share one GPU.
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # the GPU is initialised already
                pass
        devices = [d.name.split(":", 1)[1] for d in tf.config.list_logical_devices()]
        logger.info("TensorFlow %s, devices: %s", tf.__version__, ", ".join(devices))
        _tensorflow_configured = True
    return tf


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a JPEG/PNG/GIF/BMP file, decoded by TensorFlow
    as the reference extraction did (decoders differ in their JPEG rounding)."""
    tf = import_tensorflow()
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def select_regions(
    outputs: Mapping[str, np.ndarray], max_regions: int, class_offset: int
) -> List[RegionFeatures]:
    """Per image of a batch of detector outputs: the valid detections (the
    first ``num_detections``), the ``max_regions`` best by score, best first,
    with features mean-pooled over space, classes shifted by the background
    offset and boxes clipped to [0, 1] (against float round-off)."""
    scores = np.asarray(outputs["detection_scores"], dtype=np.float32)
    batch, slots = scores.shape
    counts = outputs.get("num_detections")
    counts = np.full(batch, slots) if counts is None else np.asarray(counts).reshape(batch)
    features = outputs["detection_features"]
    if features.ndim < 3 or features.shape[:2] != (batch, slots):
        raise ValueError(
            f"detection_features has shape {features.shape}, expected ({batch}, {slots}, ..., C)"
        )
    regions = []
    for b in range(batch):
        valid = min(int(counts[b]), slots)
        order = np.argsort(-scores[b, :valid], kind="stable")[:max_regions]
        picked = np.asarray(features[b, order], dtype=np.float32)
        pooled = picked.reshape(len(order), -1, picked.shape[-1]).mean(axis=1)
        classes = np.rint(np.asarray(outputs["detection_classes"][b, order], dtype=np.float64))
        regions.append(
            RegionFeatures(
                features=pooled,
                boxes=np.clip(np.asarray(outputs["detection_boxes"][b, order], np.float32), 0, 1),
                classes=classes.astype(np.int64) - class_offset,
                scores=scores[b, order],
            )
        )
    return regions


def _find_saved_model(path: Path) -> Path:
    """The folder holding saved_model.pb: the given one, or the
    ``saved_model/`` inside a TF Object Detection API export."""
    for candidate in (path, path / "saved_model"):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise ExtractionError(f"{path}: no saved_model.pb (nor saved_model/saved_model.pb)")


class RegionDetector:
    """A detector SavedModel's serving signature, called on uint8 images.

    Exports of the Object Detection API usually take one image per call
    (input shape [1, H, W, 3]); a signature whose batch dimension is free
    takes several images at once, provided they have the same size."""

    def __init__(
        self,
        path,
        signature: str = "serving_default",
        num_classes: int = DEFAULT_NUM_CLASSES,
        class_offset: Optional[int] = None,
    ):
        tf = self._tf = import_tensorflow()
        self.path = Path(path)
        model_dir = _find_saved_model(self.path)
        # Kept referenced: the signature functions need the loaded object alive.
        self._loaded = tf.saved_model.load(str(model_dir))
        signatures = dict(self._loaded.signatures)
        if signature in signatures:
            self._fn = signatures[signature]
        elif len(signatures) == 1:
            self._fn = next(iter(signatures.values()))
        else:
            raise ExtractionError(
                f"{model_dir}: no signature '{signature}' (it has {sorted(signatures) or 'none'})"
            )
        _, inputs = self._fn.structured_input_signature
        if len(inputs) != 1:
            raise ExtractionError(f"{model_dir}: the signature takes {sorted(inputs)}, not one image tensor")
        [(self.input_name, spec)] = inputs.items()
        shape = spec.shape.as_list() if spec.shape.rank is not None else None
        if shape is None or len(shape) != 4 or shape[3] not in (None, 3):
            raise ExtractionError(f"{model_dir}: input '{self.input_name}' is {spec}, not [B, H, W, 3] images")
        if shape[1] is not None or shape[2] is not None:
            raise ExtractionError(
                f"{model_dir}: input '{self.input_name}' has a fixed image size {shape[1:3]}; "
                "export the detector with a free input size"
            )
        if shape[0] not in (None, 1):
            raise ExtractionError(f"{model_dir}: input batch size is fixed at {shape[0]}")
        # None: any number of same-size images per call.
        self.max_batch: Optional[int] = shape[0]
        self.input_dtype = spec.dtype
        outputs = self._fn.structured_outputs
        missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise ExtractionError(
                f"{model_dir}: the detector does not output {missing} (it has "
                f"{sorted(outputs)}); re-export it with detection_features"
            )
        self.num_classes = num_classes
        self.class_offset = self._class_offset(outputs, class_offset)
        self.feature_dim = outputs["detection_features"].shape[-1]
        if self.feature_dim is None:  # dynamic in the signature: ask the model
            blank = np.zeros((64, 64, 3), np.uint8)
            self.feature_dim = self._run([blank])["detection_features"].shape[-1]
        self.feature_dim = int(self.feature_dim)

    def _class_offset(self, outputs, given: Optional[int]) -> int:
        """The background offset: given, else inferred as the reference did
        from the width of ``raw_detection_scores`` (classes + background),
        else 1, the Object Detection API's label offset."""
        if given is not None:
            return given
        raw = outputs.get("raw_detection_scores")
        width = raw.shape[-1] if raw is not None else None
        if width is None:
            logger.info("class offset 1 (the detector has no raw_detection_scores to infer it)")
            return 1
        offset = int(width) - self.num_classes
        if offset < 0:
            raise ExtractionError(
                f"{self.path}: raw_detection_scores has {width} classes, fewer than "
                f"--num-classes {self.num_classes}"
            )
        logger.info("class offset %d (raw_detection_scores has %d columns)", offset, width)
        return offset

    def _run(self, images: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        tf = self._tf
        batch = tf.constant(np.stack(images))
        if self.input_dtype != tf.uint8:  # float exports take pixel values 0..255
            batch = tf.cast(batch, self.input_dtype)
        outputs = self._fn(**{self.input_name: batch})
        return {
            key: outputs[key].numpy()
            for key in REQUIRED_OUTPUTS + ("num_detections",)
            if key in outputs
        }

    def detect(self, images: Sequence[np.ndarray], max_regions: int) -> List[RegionFeatures]:
        """Regions of same-size (H, W, 3) uint8 images, in one call; at most
        ``max_batch`` images."""
        if self.max_batch is not None and len(images) > self.max_batch:
            raise ValueError(f"{len(images)} images, the detector takes {self.max_batch} per call")
        return select_regions(self._run(images), max_regions, self.class_offset)


# -- reading images ahead of the detector --


@dataclass
class LoadedImage:
    entry: ImageEntry
    pixels: Optional[np.ndarray] = None  # (H, W, 3) uint8, None on failure
    reason: Optional[str] = None  # one of FAILURE_REASONS
    detail: str = ""


class ImageReader:
    """Reads and decodes images in a background thread, so that file I/O and
    decoding overlap the detector.

    At most ``max_in_memory`` images are held at once: the reader takes a
    permit before reading a file and the consumer returns it with
    ``release()`` once it is done with the image. Iterating yields the
    images (and the failures) in list order."""

    def __init__(
        self,
        entries: Sequence[ImageEntry],
        image_dir,
        max_in_memory: int,
        min_side: int = 16,
        decode: Callable[[bytes], np.ndarray] = decode_image,
    ):
        if max_in_memory < 1:
            raise ValueError("max_in_memory must be at least 1")
        self.entries = list(entries)
        self.image_dir = Path(image_dir)
        self.min_side = min_side
        self.decode = decode
        self.max_in_memory = max_in_memory
        self.in_memory = 0
        self.peak_in_memory = 0
        self._permits = threading.Semaphore(max_in_memory)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._read_all, name="image-reader", daemon=True)
        self._thread.start()

    def _load(self, entry: ImageEntry) -> LoadedImage:
        path = self.image_dir / entry.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return LoadedImage(entry, reason="missing", detail=f"{path}: no such file")
        except OSError as e:
            return LoadedImage(entry, reason="unreadable", detail=f"{path}: {e}")
        try:
            pixels = self.decode(data)
        except Exception as e:  # any decoder complaint is about this file only
            return LoadedImage(entry, reason="unreadable", detail=f"{path}: {_short(e)}")
        if min(pixels.shape[:2]) < self.min_side:
            return LoadedImage(
                entry,
                reason="too_small",
                detail=f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, "
                f"the smaller side is below {self.min_side}",
            )
        return LoadedImage(entry, pixels=pixels)

    def _read_all(self) -> None:
        try:
            for entry in self.entries:
                while not self._permits.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                with self._lock:
                    self.in_memory += 1
                    self.peak_in_memory = max(self.peak_in_memory, self.in_memory)
                self._queue.put(self._load(entry))
            self._queue.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._queue.put(e)

    def release(self) -> None:
        """The consumer is done with one yielded image."""
        with self._lock:
            self.in_memory -= 1
        self._permits.release()

    def __iter__(self) -> Iterator[LoadedImage]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# Parts of TensorFlow's error messages that locate the op, not the problem.
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|\[\[.*?\]\]")
_TF_NOISE_LINES = ("Graph execution error", "Detected at node", "<stack traces", "File ")


def _short(error: Exception) -> str:
    """One line saying what went wrong, for the report."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(_TF_NOISE_LINES)]
    text = " ".join(_TF_NOISE.sub("", " ".join(kept)).split())
    return f"{type(error).__name__}: {text[:300]}"


# -- the extraction run --


@dataclass
class Failure:
    image: str
    line: int
    reason: str
    detail: str


@dataclass
class ExtractionReport:
    image_list: str
    unique_names: int
    duplicates: int
    blank_lines: int
    shard: Tuple[int, int]  # (id, count)
    in_shard: int = 0
    already_present: int = 0
    extracted: int = 0
    fewer_regions: int = 0  # extracted images with fewer detections than region slots
    failures: List[Failure] = field(default_factory=list)

    def failure_counts(self) -> Dict[str, int]:
        counts = Counter(f.reason for f in self.failures)
        return {reason: counts[reason] for reason in FAILURE_REASONS if counts[reason]}

    def lines(self) -> List[str]:
        shard_id, num_shards = self.shard
        where = f"shard {shard_id} of {num_shards}: " if num_shards > 1 else ""
        failed = ", ".join(f"{k} {v}" for k, v in self.failure_counts().items())
        return [
            f"{where}{self.in_shard} images of {self.unique_names} unique names in "
            f"{self.image_list} ({self.duplicates} repeated names and {self.blank_lines} "
            "blank lines ignored)",
            f"extracted {self.extracted}, already in the store {self.already_present}, "
            f"failed {len(self.failures)}" + (f" ({failed})" if failed else ""),
            f"{self.fewer_regions} extracted images have fewer regions than the store's slots",
        ]

    def write_failures(self, path) -> None:
        """One JSON object per failed image: image, line, reason, detail."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for failure in self.failures:
                f.write(json.dumps(failure.__dict__, ensure_ascii=False) + "\n")


@dataclass
class ExtractionConfig:
    detector: str
    image_dir: str
    image_list: str
    output: str
    max_regions: int = 36
    batch_size: int = 1
    max_in_memory: int = 16  # decoded images held at once (read ahead + current batch)
    num_shards: int = 1
    shard_id: int = 0
    dtype: str = "float16"
    num_classes: int = DEFAULT_NUM_CLASSES
    class_offset: Optional[int] = None  # None: inferred from the detector
    min_side: int = 16
    signature: str = "serving_default"
    report: Optional[str] = None  # default: OUTPUT with suffix .failures.jsonl
    part_images: int = 256  # a kill loses at most this many images' work...
    part_seconds: float = 60.0  # ...or this many seconds of it


def default_report_path(output) -> Path:
    return Path(output).with_suffix(".failures.jsonl")


def extract_region_features(
    config: ExtractionConfig,
    progress: bool = False,
    on_reader: Optional[Callable[[ImageReader], None]] = None,
) -> ExtractionReport:
    """Runs the detector over this shard's images and adds them to
    ``config.output``; images already there are skipped (resuming). Failed
    images are reported, written to the failure report and never stop the
    run. ``on_reader`` sees the image reader (for tests and monitoring)."""
    for option, value in (("--batch-size", config.batch_size), ("--max-regions", config.max_regions),
                          ("--num-classes", config.num_classes), ("--min-side", config.min_side),
                          ("--part-images", config.part_images)):  # fmt: skip
        if value < 1:
            raise ExtractionError(f"{option} must be at least 1, not {value}")
    if not config.part_seconds > 0:
        raise ExtractionError(f"--part-seconds must be above 0, not {config.part_seconds}")
    if config.class_offset is not None and config.class_offset < 0:
        raise ExtractionError(f"--class-offset must be 'auto' or at least 0, not {config.class_offset}")
    if not Path(config.image_dir).is_dir():
        raise ExtractionError(f"{config.image_dir}: no such image folder (--image-dir)")
    if config.max_in_memory < config.batch_size:
        raise ExtractionError(
            f"--max-in-memory {config.max_in_memory} is below --batch-size "
            f"{config.batch_size}: a batch must fit in memory"
        )
    listed = read_image_list(config.image_list)
    entries = shard_entries(listed.entries, config.num_shards, config.shard_id)
    report = ExtractionReport(
        image_list=str(config.image_list),
        unique_names=len(listed.entries),
        duplicates=listed.duplicates,
        blank_lines=listed.blank_lines,
        shard=(config.shard_id, config.num_shards),
        in_shard=len(entries),
    )
    report_path = Path(config.report) if config.report else default_report_path(config.output)
    store = ResumableStoreBuilder(
        config.output,
        num_regions=config.max_regions,
        dtype=config.dtype,
        num_classes=config.num_classes,
        attrs={
            "source": f"vtlm-extract-features {config.detector}",
            "image_list": str(config.image_list),
            "shard": f"{config.shard_id}/{config.num_shards}",
        },
        part_images=config.part_images,
        part_seconds=config.part_seconds,
    )
    pending = [e for e in entries if e.name not in store]
    report.already_present = len(entries) - len(pending)
    if pending:
        detector = RegionDetector(config.detector, config.signature, config.num_classes, config.class_offset)
        if store.feature_dim is not None and store.feature_dim != detector.feature_dim:
            raise ExtractionError(
                f"{config.output}: the existing store has {store.feature_dim}-dim "
                f"features, the detector gives {detector.feature_dim}"
            )
        store.feature_dim = detector.feature_dim
        store.attrs["class_offset"] = str(detector.class_offset)
        try:
            _run_detector(config, detector, store, pending, report, progress, on_reader)
        except BaseException:
            # Ctrl-C or an unexpected error: what was extracted is kept, the
            # rerun continues after it
            store.commit()
            raise
    if store.feature_dim is None:
        logger.warning("%s: no image in shard %d/%d: no store written", config.image_list, config.shard_id,
                       config.num_shards)  # fmt: skip
    else:
        store.finish()
    report.write_failures(report_path)
    return report


def _run_detector(config, detector, writer: ResumableStoreBuilder, pending, report, progress, on_reader) -> None:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    logged_reasons = set()

    def fail(image: LoadedImage, reason: str, detail: str) -> None:
        report.failures.append(Failure(image.entry.name, image.entry.line, reason, detail))
        bar.set_postfix(failed=len(report.failures), refresh=False)
        if reason not in logged_reasons:  # the rest only in the report: lists can be huge
            logged_reasons.add(reason)
            logger.warning("%s:%d: %s: %s (further '%s' failures only in the report)",
                           config.image_list, image.entry.line, reason, detail, reason)

    def store(image: LoadedImage, regions: RegionFeatures) -> None:
        try:
            writer.add(image.entry.name, regions)
        except FeatureStoreError as e:
            fail(image, "bad_output", str(e).split(": image ", 1)[-1])
            return
        report.extracted += 1
        report.fewer_regions += len(regions) < config.max_regions

    def detect(images: List[LoadedImage]) -> None:
        try:
            results = detector.detect([im.pixels for im in images], config.max_regions)
        except Exception as e:
            if len(images) > 1:  # find the image to blame; the others still count
                for image in images:
                    detect([image])
                return
            fail(images[0], "detector_error", _short(e))
            return
        for image, regions in zip(images, results):
            store(image, regions)

    def process(batch: List[LoadedImage]) -> None:
        # Only same-size images can share a call: padding would shift the
        # normalised boxes and the features.
        groups: Dict[Tuple[int, ...], List[LoadedImage]] = {}
        for image in batch:
            groups.setdefault(image.pixels.shape, []).append(image)
        for group in groups.values():
            step = detector.max_batch or len(group)
            for start in range(0, len(group), step):
                detect(group[start : start + step])

    reader = ImageReader(pending, config.image_dir, config.max_in_memory, config.min_side)
    if on_reader is not None:
        on_reader(reader)
    bar = tqdm(total=len(pending), unit="img", disable=not progress, dynamic_ncols=True)

    def finish(batch: List[LoadedImage]) -> None:
        process(batch)
        for _ in batch:
            reader.release()
        bar.update(len(batch))

    batch: List[LoadedImage] = []
    try:
        with logging_redirect_tqdm():  # warnings above the bar, not through it
            for image in reader:
                if image.reason is not None:
                    fail(image, image.reason, image.detail)
                    reader.release()
                    bar.update(1)
                    continue
                batch.append(image)
                if len(batch) == config.batch_size:
                    finish(batch)
                    batch = []
            if batch:
                finish(batch)
    finally:
        bar.close()
        reader.close()

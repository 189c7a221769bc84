"""A tiny stand-in for the paper's TensorFlow detector, with the outputs of an
Object Detection API export re-exported with ``detection_features``, and a
folder of test images. Its outputs are computed from the image so that tests
can tell which image's features landed under which name."""

from pathlib import Path
from typing import Dict

import numpy as np

TF_MISSING = (
    "TensorFlow is not installed: the detector tests need the [extract] extra "
    "(pip install -e '.[extract]')"
)


def require_tensorflow():
    """Skips without TensorFlow, except where the environment is known to
    install it (scripts/test.sh sets VTLM_REQUIRE_TENSORFLOW=1): there a
    missing TensorFlow is a failure, not a skip."""
    import os

    import pytest

    if os.environ.get("VTLM_REQUIRE_TENSORFLOW") == "1":
        import tensorflow  # noqa: F401  (ImportError fails the test)
    else:
        pytest.importorskip("tensorflow", reason=TF_MISSING)
NUM_CLASSES = 10
# Scores per detection slot, deliberately unsorted. Only the first
# VALID_DETECTIONS slots are real; the last one has the best score but lies
# past num_detections, so it must never be kept.
SCORES = np.array([0.2, 0.9, 0.5, 0.7, 0.99], np.float32)
VALID_DETECTIONS = 4
# 1-based class ids (background offset 1): after the offset, slots 1 and 2
# hit the ends of [0, NUM_CLASSES).
CLASSES = np.array([3, 1, 10, 5, 7], np.float32)
# Feature maps are 2x2; this spatial pattern averages to 1.5, so a missing or
# wrong pooling shows in the values.
SPATIAL = np.array([[0, 1], [2, 3]], np.float32)
CHANNELS = 6
REFUSED_WIDTH = 37  # the detector fails on images of this width


def boxes() -> np.ndarray:
    k = np.arange(len(SCORES), dtype=np.float32)[:, None]
    out = np.concatenate([k * 0.1, k * 0.05, k * 0.1 + 0.5, k * 0.05 + 0.5], axis=1)
    out[1, 0] = -1e-6  # float round-off below 0, as real detectors produce
    return out


def expected_features(pixels: np.ndarray) -> np.ndarray:
    """Pooled features of every detection slot of one (H, W, 3) image."""
    colour = pixels.reshape(-1, 3).astype(np.float64).mean(0) / 255
    per_channel = np.concatenate([colour, 2 * colour])
    slots = np.arange(len(SCORES))[:, None]
    return (per_channel[None, :] + slots + SPATIAL.mean()).astype(np.float32)


def expected_regions(pixels: np.ndarray, max_regions: int) -> Dict[str, np.ndarray]:
    """What the extractor must store for an image: the best valid slots."""
    order = np.argsort(-SCORES[:VALID_DETECTIONS], kind="stable")[:max_regions]
    return {
        "features": expected_features(pixels)[order],
        "boxes": np.clip(boxes()[order], 0, 1),
        "classes": CLASSES[order].astype(np.int64) - 1,
        "scores": SCORES[order],
    }


def build_tiny_detector(path: Path) -> Path:
    """Saves the detector as a SavedModel with three signatures:
    ``serving_default`` (any batch size), ``batch_one`` (input [1, H, W, 3],
    as most Object Detection API exports) and ``no_features`` (an export
    without detection_features)."""
    import tensorflow as tf

    def detections(images):
        size = tf.shape(images)
        tf.debugging.assert_none_equal(size[2], REFUSED_WIDTH, message="refused width")
        batch = size[0]
        colour = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2]) / 255.0
        per_channel = tf.concat([colour, 2.0 * colour], axis=1)  # (B, C)
        slots = tf.range(len(SCORES), dtype=tf.float32)[None, :, None]
        base = per_channel[:, None, :] + slots  # (B, N, C)
        maps = base[:, :, None, None, :] + tf.constant(SPATIAL)[None, None, :, :, None]

        def per_image(values):
            return tf.tile(tf.constant(values)[None], [batch] + [1] * values.ndim)

        return {
            "detection_boxes": per_image(boxes()),
            "detection_scores": per_image(SCORES),
            "detection_classes": per_image(CLASSES),
            "num_detections": tf.fill([batch], float(VALID_DETECTIONS)),
            "detection_features": maps,
            # width = classes + background: the extractor infers offset 1
            "raw_detection_scores": tf.zeros([batch, len(SCORES), NUM_CLASSES + 1]),
        }

    class TinyDetector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def detect(self, input_tensor):
            return detections(input_tensor)

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def detect_one(self, input_tensor):
            return detections(input_tensor)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def detect_without_features(self, input_tensor):
            outputs = detections(input_tensor)
            del outputs["detection_features"]
            return outputs

    module = TinyDetector()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.detect,
            "batch_one": module.detect_one,
            "no_features": module.detect_without_features,
        },
    )
    return path


def random_image(rng, height: int, width: int) -> np.ndarray:
    """Noise around a random colour: images differ in mean colour, hence in
    features, by far more than float16 rounding."""
    colour = rng.integers(0, 200, 3)
    return (colour + rng.integers(0, 56, (height, width, 3))).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray) -> None:
    import tensorflow as tf

    encode = tf.io.encode_jpeg if path.suffix == ".jpg" else tf.io.encode_png
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(pixels).numpy())


def make_image_folder(folder: Path, seed: int = 0) -> Dict[str, np.ndarray]:
    """Test images; returns the pixels of the good ones by name. Also writes a
    too-small image, an undecodable one and one the detector refuses; the
    image list names one more that does not exist."""
    rng = np.random.default_rng(seed)
    good = {
        "a.png": random_image(rng, 20, 30),
        "b.png": random_image(rng, 20, 30),  # same size as a: batched with it
        "sub/c.png": random_image(rng, 32, 24),
        "d.png": random_image(rng, 17, 40),
        "e.png": random_image(rng, 20, 30),
        "f.png": random_image(rng, 25, 25),
        # JPEG is lossy: a flat colour survives with small errors
        "g.jpg": np.full((24, 24, 3), (200, 40, 90), np.uint8),
    }
    for name, pixels in good.items():
        write_image(folder / name, pixels)
    write_image(folder / "tiny.png", random_image(rng, 8, 40))
    write_image(folder / "refused.png", random_image(rng, 20, REFUSED_WIDTH))
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    return good


IMAGE_LIST = """a.png
b.png
tiny.png
sub/c.png

broken.jpg
d.png
gone.png
a.png
refused.png
e.png
f.png
g.jpg
"""
FAILED = {"tiny.png": "too_small", "broken.jpg": "unreadable", "gone.png": "missing",
          "refused.png": "detector_error"}  # fmt: skip

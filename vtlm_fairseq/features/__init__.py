"""Stage 2, offline: region features of images (the TensorFlow detector, resumable stores, the reference code's pickles)."""

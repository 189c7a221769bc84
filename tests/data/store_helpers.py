import numpy as np

from vtlm_fairseq.data.feature_store import RegionFeatures


def random_regions(rng, n, dim=16, num_classes=601):
    tl = rng.random((n, 2), dtype=np.float32) * 0.5
    return RegionFeatures(
        features=rng.random((n, dim), dtype=np.float32) * 4,
        boxes=np.concatenate([tl, tl + 0.4], axis=1),
        classes=rng.integers(0, num_classes, n),
        scores=np.sort(rng.random(n, dtype=np.float32))[::-1].copy(),
    )

"""Token and region masking of (V)TLM, as pure functions over numpy arrays
with an explicit random generator: training, validation and probes share them.

Categories of a selected position: MASK (replace by [MASK] / mask the region),
KEEP (leave the input as it is) and RANDOM (random token / another region's
feature from the batch); the reference draws them 80/10/10.
"""

from typing import Sequence, Tuple

import numpy as np

from ..errors import InputError

MASK, KEEP, RANDOM = 0, 1, 2
NOT_SELECTED = -1


def check_probs(probs: Sequence[float], name: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (3,) or (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
        raise InputError(f"{name} must be three probabilities (mask, keep, random) summing to 1: {list(probs)}")
    return p


def select(rng: np.random.Generator, eligible: np.ndarray, prob: float) -> np.ndarray:
    """Each eligible position is chosen independently with probability prob."""
    if not 0.0 <= prob <= 1.0:
        raise InputError(f"masking probability must lie in [0, 1]: {prob}")
    return eligible & (rng.random(eligible.shape) < prob)


def categories(rng: np.random.Generator, selected: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """NOT_SELECTED, or MASK/KEEP/RANDOM drawn with probs, per position."""
    out = np.full(selected.shape, NOT_SELECTED, dtype=np.int64)
    n = int(selected.sum())
    if n:
        out[selected] = rng.choice(3, size=n, p=probs)
    return out


def mask_text(
    rng: np.random.Generator,
    tokens: np.ndarray,
    eligible: np.ndarray,
    prob: float,
    probs: np.ndarray,
    mask_idx: int,
    random_vocab: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray]:
    """BERT-style text masking. Returns (input tokens, category per position);
    ``random_vocab`` lists the token ids a RANDOM position may take."""
    cat = categories(rng, select(rng, eligible, prob), probs)
    out = tokens.copy()
    out[cat == MASK] = mask_idx
    n_random = int((cat == RANDOM).sum())
    if n_random:
        out[cat == RANDOM] = rng.choice(random_vocab, size=n_random)
    return out, cat


def swap_sources(rng: np.random.Generator, category: np.ndarray, real: np.ndarray) -> np.ndarray:
    """For each RANDOM region of a batch (B, R), the flat index (into B*R) of a
    real region of the batch whose feature replaces it; -1 elsewhere."""
    pool = np.flatnonzero(real)
    src = np.full(category.shape, -1, dtype=np.int64)
    swap = category == RANDOM
    if swap.any() and len(pool):
        src[swap] = rng.choice(pool, size=int(swap.sum()))
    return src

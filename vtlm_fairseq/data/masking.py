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
    n = int(np.count_nonzero(selected))
    if n:
        # the draw of rng.choice(3, size=n, p=probs), without its per-call
        # checks of probs (check_probs made them once): a quarter of the time
        cdf = np.cumsum(probs)
        out[selected] = np.searchsorted(cdf / cdf[-1], rng.random(n), side="right")
    return out


def draw(rng: np.random.Generator, population: np.ndarray, size: int) -> np.ndarray:
    """rng.choice(population, size=size), drawn the same way at less cost."""
    return population[rng.integers(0, len(population), size=size)]


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
    random = cat == RANDOM
    n_random = int(np.count_nonzero(random))
    if n_random:
        out[random] = draw(rng, random_vocab, n_random)
    return out, cat


def swap_sources(rng: np.random.Generator, category: np.ndarray, real: np.ndarray) -> np.ndarray:
    """For each RANDOM region of a batch (B, R), the flat index (into B*R) of a
    real region of the batch whose feature replaces it; -1 elsewhere."""
    pool = np.flatnonzero(real)
    src = np.full(category.shape, -1, dtype=np.int64)
    swap = category == RANDOM
    if swap.any() and len(pool):
        src[swap] = draw(rng, pool, int(np.count_nonzero(swap)))
    return src

import numpy as np
import pytest

from vtlm_fairseq.data.masking import (
    KEEP,
    MASK,
    NOT_SELECTED,
    RANDOM,
    categories,
    check_probs,
    draw,
    mask_text,
    select,
    swap_sources,
)


def test_selection_rate_within_tolerance():
    rng = np.random.default_rng(0)
    eligible = np.ones(200_000, dtype=bool)
    eligible[::10] = False  # e.g. first </s> of each pair
    chosen = select(rng, eligible, 0.15)
    assert not chosen[~eligible].any()
    rate = chosen[eligible].mean()
    assert abs(rate - 0.15) < 0.003  # ~6 standard deviations


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_selection_extremes(prob):
    chosen = select(np.random.default_rng(0), np.ones(1000, dtype=bool), prob)
    assert chosen.sum() == 1000 * prob


def test_80_10_10_split():
    rng = np.random.default_rng(1)
    selected = np.ones(100_000, dtype=bool)
    selected[:5000] = False
    cat = categories(rng, selected, check_probs([0.8, 0.1, 0.1], "p"))
    assert (cat[:5000] == NOT_SELECTED).all()
    shares = [(cat[5000:] == c).mean() for c in (MASK, KEEP, RANDOM)]
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.006)


def test_mask_text_replacements():
    rng = np.random.default_rng(2)
    tokens = np.arange(10, 60_010) % 50 + 10
    eligible = np.ones(len(tokens), dtype=bool)
    random_vocab = np.arange(20, 30)
    out, cat = mask_text(rng, tokens, eligible, 0.5, np.array([0.8, 0.1, 0.1]), 3, random_vocab)
    assert (out[cat == MASK] == 3).all()
    assert (out[cat == KEEP] == tokens[cat == KEEP]).all()
    assert np.isin(out[cat == RANDOM], random_vocab).all()
    assert (out[cat == NOT_SELECTED] == tokens[cat == NOT_SELECTED]).all()


def test_bad_probabilities_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        check_probs([0.8, 0.1], "x")
    with pytest.raises(ValueError, match="summing to 1"):
        check_probs([0.8, 0.3, -0.1], "x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select(np.random.default_rng(0), np.ones(3, dtype=bool), 1.5)


def test_swap_sources_take_real_regions_only():
    rng = np.random.default_rng(3)
    real = np.zeros((4, 6), dtype=bool)
    real[:, :3] = True
    cat = np.full((4, 6), NOT_SELECTED)
    cat[0, 0] = cat[2, 1] = RANDOM
    cat[1, 1] = MASK
    src = swap_sources(rng, cat, real)
    assert (src[cat != RANDOM] == -1).all()
    assert real.reshape(-1)[src[cat == RANDOM]].all()


@pytest.mark.parametrize("seed", range(50))
def test_draws_are_those_of_generator_choice(seed):
    # categories and draw replace rng.choice for speed: the same draws, so the
    # masks of seeded runs (and of the reference fixtures) stay what they were
    probs = check_probs([0.8, 0.1, 0.1], "p")
    selected = np.random.default_rng(seed).random(40) < 0.5
    ours, theirs = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
    expected = np.full(40, -1)
    expected[selected] = theirs.choice(3, size=int(selected.sum()), p=probs)
    np.testing.assert_array_equal(categories(ours, selected, probs), expected)
    population = np.arange(7, 300, 3)
    np.testing.assert_array_equal(draw(ours, population, seed % 9), theirs.choice(population, size=seed % 9))
    assert ours.random() == theirs.random()  # the generators are left in the same state

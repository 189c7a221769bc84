"""Training sources degraded at random, seeded by (seed, epoch, pair)."""

import pytest
import torch
from fairseq.data import Dictionary

from vtlm_fairseq.data.source_degradation import DegradationSettings, SourceDegrader
from vtlm_fairseq.data.words import EntityWords
from vtlm_fairseq.errors import InputError

WORDS = EntityWords({"dog": {"hund"}, "surfboard": {"surfbrett"}})


@pytest.fixture
def dictionary():
    d = Dictionary()
    for piece in ("a", "dog", "surf@@", "board", "runs", "on", "the", "beach", ".", "<mask>"):
        d.add_symbol(piece)
    return d


def encode(d, text):
    return torch.tensor([d.eos()] + [d.index(p) for p in text.split()] + [d.eos()])


def decode(d, tokens):
    return " ".join(d[t] for t in tokens[1:-1].tolist())


def degrader(d, **settings):
    return SourceDegrader(d, WORDS, DegradationSettings(**settings), d.index("<mask>"), seed=1)


def test_entity_words_are_masked_whole_and_nothing_else(dictionary):
    source = encode(dictionary, "a dog runs on the surf@@ board .")
    out = degrader(dictionary, entity_prob=1.0)(source, pair=0)
    assert decode(dictionary, out) == "a <mask> runs on the <mask> ."  # one <mask> for both BPE pieces
    assert out[0] == out[-1] == dictionary.eos()
    deleted = degrader(dictionary, entity_prob=1.0, mode="delete")(source, pair=0)
    assert decode(dictionary, deleted) == "a runs on the ."
    everything = degrader(dictionary, word_prob=1.0)(source, pair=0)
    assert decode(dictionary, everything) == "<mask> dog <mask> <mask> <mask> surf@@ board ."  # never punctuation


def test_draws_are_seeded_by_pair_and_epoch(dictionary):
    source = encode(dictionary, " ".join(["a dog runs on the beach ."] * 4))
    d = degrader(dictionary, entity_prob=0.5, word_prob=0.5)
    d.set_epoch(1)
    first = [d(source, pair) for pair in range(20)]
    assert all(torch.equal(a, d(source, pair)) for pair, a in enumerate(first))  # the same draws again
    assert len({tuple(t.tolist()) for t in first}) > 10  # pairs differ
    d.set_epoch(2)
    assert sum(not torch.equal(a, d(source, pair)) for pair, a in enumerate(first)) > 10  # epochs differ
    assert torch.equal(degrader(dictionary)(source, 3), source)  # off


@pytest.mark.parametrize("settings", [{"entity_prob": 1.5}, {"word_prob": -0.1}, {"mode": "swap"}])
def test_bad_settings_are_input_errors(settings):
    with pytest.raises(InputError, match="source degradation"):
        DegradationSettings(**settings)

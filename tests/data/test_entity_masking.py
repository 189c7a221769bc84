"""Entity-first (V)TLM masking: an English entity word and its German
translations in the pair, whole words, drawn per word from the generator."""

import numpy as np
import pytest
from fairseq.data import Dictionary

from vtlm_fairseq.data.entity_masking import EntityMasker
from vtlm_fairseq.data.words import EntityWords

WORDS = EntityWords({"dog": {"hund", "hunde"}, "dogs": {"hund", "hunde"}, "surfboard": {"surfbrett"}})


@pytest.fixture
def dictionary():
    d = Dictionary()
    for piece in "a dog dogs runs on the surf@@ board . ein hund läuft auf dem surf@@ brett hunde".split():
        d.add_symbol(piece)
    return d


def encode(d, text):
    return np.array([d.index(p) for p in text.split()] + [d.eos()])


def test_chosen_entities_are_masked_in_both_languages(dictionary):
    src, tgt = encode(dictionary, "a dog runs on the surf@@ board ."), encode(dictionary, "ein hund läuft auf dem surf@@ brett .")
    tokens = np.concatenate([[dictionary.eos()], src, [dictionary.eos()], tgt])
    tgt_start = len(src) + 2
    chosen = EntityMasker(dictionary, WORDS, 1.0).positions(np.random.default_rng(0), src, tgt, tgt_start)
    words = [dictionary[t] for t in tokens[np.sort(chosen)]]
    assert words == ["dog", "surf@@", "board", "hund", "surf@@", "brett"]  # every piece, both sides
    assert len(EntityMasker(dictionary, WORDS, 0.0).positions(np.random.default_rng(0), src, tgt, tgt_start)) == 0


def test_one_draw_per_english_entity_decides_its_german_too(dictionary):
    src, tgt = encode(dictionary, "a dog runs on the surf@@ board ."), encode(dictionary, "ein hund läuft auf dem surf@@ brett .")
    tgt_start = len(src) + 2
    masker = EntityMasker(dictionary, WORDS, 0.5)
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        draws = np.random.default_rng(seed).random(2) < 0.5  # dog, surfboard
        chosen = set(masker.positions(rng, src, tgt, tgt_start).tolist())
        # the pair's tokens: </s> first, so the source's word i is token i + 1
        dog, board = {2, tgt_start + 1} <= chosen, {6, 7, tgt_start + 5, tgt_start + 6} <= chosen
        assert (dog, board) == tuple(draws)
        assert len(chosen) == 2 * dog + 4 * board  # nothing else
        seen.add((dog, board))
    assert len(seen) == 4


def test_german_word_without_its_english_entity_is_left(dictionary):
    src, tgt = encode(dictionary, "a dog runs ."), encode(dictionary, "hunde läuft auf dem surf@@ brett .")
    chosen = EntityMasker(dictionary, WORDS, 1.0).positions(np.random.default_rng(0), src, tgt, len(src) + 2)
    assert sorted(chosen.tolist()) == [2, 7]  # dog and hunde; surfbrett's English is not in the source


def test_repeated_entity_and_words_sharing_its_translations_are_one_draw(dictionary):
    """"a dog ... dogs": masking one of them and not the other would give the
    masked one away, so they share a draw."""
    src = encode(dictionary, "a dog runs on the dog dogs surf@@ board .")
    tgt = encode(dictionary, "ein hund läuft auf hunde .")
    tgt_start = len(src) + 2
    masker, seen = EntityMasker(dictionary, WORDS, 0.5), set()
    for seed in range(30):
        chosen = set(masker.positions(np.random.default_rng(seed), src, tgt, tgt_start).tolist())
        dogs = {2, 6, 7, tgt_start + 1, tgt_start + 4}
        assert dogs <= chosen or not dogs & chosen
        seen.add(dogs <= chosen)
    assert seen == {True, False}

"""Beam search over MMT gives the same hypotheses whether the encoder states
are reordered (our default, with the cross-attention keys and values kept
once per sentence) or recomputed, and whether or not the cross-attention
groups the beams: the generation benchmark's counterfactuals, and a check of
the translation model's beamable cross-attention, also when sentences of a
batch finish at different steps."""

import pytest

from benchmarks.generation import COUNTERFACTUALS, Decoder, MODEL
from tests.conftest import TINY_DIMS


@pytest.mark.parametrize("forced_length", [True, False])
def test_counterfactual_decoding_gives_the_same_hypotheses(toy_data, forced_length):
    data, store, _ = toy_data
    argv = [data, "--task", "multimodal_translation", "--region-features", store, *MODEL, *TINY_DIMS]
    mmt = Decoder(argv, batch_size=8, beam=4, forced_length=forced_length)
    if not forced_length:  # an untrained model rarely ends a sentence: make </s> likely
        mmt.model.decoder.lm_bias.data[mmt.task.target_dictionary.eos()] = 2.0
    mmt.block()
    assert len(mmt.hypotheses) == len(mmt.task.dataset("test"))
    lengths = {len(h) for h in mmt.hypotheses}
    assert len(lengths) == 1 if forced_length else len(lengths) > 2
    for mode in COUNTERFACTUALS:
        other = Decoder([], 8, 4, mode, mmt.model, mmt.task, forced_length=forced_length)
        other.block()
        assert other.hypotheses == mmt.hypotheses, mode

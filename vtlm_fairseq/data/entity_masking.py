"""Entity-first word masking for (V)TLM pre-training (issue 16).

Random masking rarely hides a caption's objects in both languages at once,
and when it hides "dog" the German "Hund" beside it gives the word away, so
nothing in TLM makes the regions worth reading. This masks, with a
probability per English entity (the probes' list), the word and every
German word of the pair that translates it, all BPE pieces of each: then
only the image and the rest of the sentence can tell what it was. One draw
decides every occurrence of an entity and of the English words that share
its translations ("man" and "men"), so that none is left to give it away."""

from typing import Sequence

import numpy as np

from .words import EntityWords, word_spans


class EntityMasker:
    def __init__(self, dictionary, words: EntityWords, prob: float):
        self.dictionary, self.words, self.prob = dictionary, words, prob

    def positions(self, rng: np.random.Generator, src: Sequence[int], tgt: Sequence[int], tgt_start: int,
                  src_start: int = 1) -> np.ndarray:  # fmt: skip
        """Indices (into the pair's tokens, where src begins at ``src_start``
        and tgt at ``tgt_start``) of the chosen entity words' pieces in both
        sentences."""
        entities = [(word, start, end) for word, start, end in word_spans(self.dictionary, src)
                    if word in self.words.german]  # fmt: skip
        if not entities:
            return np.zeros(0, dtype=np.int64)
        # one draw per distinct set of German translations, in order of first occurrence
        draw_of = {}
        for word, _, _ in entities:
            draw_of.setdefault(frozenset(self.words.german[word]), len(draw_of))
        chosen = rng.random(len(draw_of)) < self.prob
        out, german = [], set()
        for word, start, end in entities:
            translations = frozenset(self.words.german[word])
            if chosen[draw_of[translations]]:
                out.extend(range(src_start + start, src_start + end))
                german |= translations
        if german:
            for word, start, end in word_spans(self.dictionary, tgt):
                if word in german:
                    out.extend(range(tgt_start + start, tgt_start + end))
        return np.asarray(out, dtype=np.int64)

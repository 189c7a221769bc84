"""Training sources degraded where the image can make up for it (issue 16).

On captions the text alone almost always suffices, so nothing in training
rewards an MMT for looking at the regions. Masking or deleting the words the
image shows (entity words: the things a detector finds) now and then makes
the image the only source of those words. Words are whole words (all their
BPE pieces); each is chosen with its own probability, drawn from a generator
seeded by (seed, epoch, pair) as the pre-training masks are, so the choice
changes every epoch, does not depend on batching or DataLoader workers, and
a resumed run draws what the uninterrupted one would have."""

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .words import EntityWords, word_spans

MODES = ("mask", "delete")
# the stream of these draws, apart from any other generator seeded by (seed, epoch, pair)
_STREAM = 0x5D


@dataclass
class DegradationSettings:
    entity_prob: float = 0.0  # each entity word of a source
    word_prob: float = 0.0  # each other word with a letter or digit (punctuation never)
    mode: str = "mask"  # "mask": one <mask> per word; "delete": the word is removed

    def __post_init__(self):
        for name in ("entity_prob", "word_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"source degradation: {name} must be in [0, 1], not {value}")
        if self.mode not in MODES:
            raise InputError(f"source degradation: mode must be one of {MODES}, not {self.mode!r}")

    @property
    def active(self) -> bool:
        return self.entity_prob > 0 or self.word_prob > 0


class SourceDegrader:
    """Degrades ``</s> src </s>`` sources of a training split: words of
    ``words`` with ``entity_prob``, every other word with ``word_prob``."""

    def __init__(self, dictionary, words: EntityWords, settings: DegradationSettings, mask_idx: int, seed: int):
        self.dictionary, self.words, self.settings = dictionary, words, settings
        self.mask_idx, self.seed = mask_idx, seed
        # the epoch in shared memory: DataLoader workers outlive an epoch
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def _prob(self, word: str) -> float:
        if word in self.words.german:
            return self.settings.entity_prob
        return self.settings.word_prob if any(c.isalnum() for c in word) else 0.0

    def __call__(self, source: torch.Tensor, pair: int) -> torch.Tensor:
        tokens = source.tolist()
        body = tokens[1:]  # after the leading </s>
        spans = word_spans(self.dictionary, body)
        if not spans:
            return source
        rng = np.random.default_rng([self.seed, int(self._epoch.item()), int(pair), _STREAM])
        chosen = rng.random(len(spans)) < np.array([self._prob(word) for word, _, _ in spans])
        if not chosen.any():
            return source
        out, last = [tokens[0]], 0
        for (_, start, end), degrade in zip(spans, chosen):
            if degrade:
                out += body[last:start] + ([self.mask_idx] if self.settings.mode == "mask" else [])
                last = end
        out += body[last:]
        return source.new_tensor(out)

"""Masked-word probes of a pre-trained (V)TLM: mask chosen words (all their
BPE pieces) of the source and/or target half and measure how often the model
restores them, with the correct or with incongruent images."""

import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, data_utils

from ..data.words import normalise, word_spans
from ..errors import InputError
from .inputs import annotations_path, check_annotations

logger = logging.getLogger(__name__)

# (dataset index) -> list of (half, first token, end token) spans; half 0 = source
Spans = Dict[int, List[Tuple[int, int, int]]]


class SpanMaskedDataset(BaseWrapperDataset):
    """A TLMDataset built without random masking, with given spans masked by
    [MASK]; ``span_ids`` marks each masked position with its span number."""

    def __init__(self, dataset, spans: Spans):
        super().__init__(dataset)
        self.spans = spans
        self.span_info = []  # span number -> (dataset index, half)
        self._first_span = {}
        for index in sorted(spans):
            self._first_span[index] = len(self.span_info)
            self.span_info += [(index, half) for half, _, _ in spans[index]]

    def __getitem__(self, index):
        item = self.dataset[index]
        source, target = item["source"].clone(), torch.full_like(item["source"], self.dataset.pad)
        span_ids = torch.full_like(source, -1)
        n_src = int((item["langs"] == self.dataset.src_lang).sum())
        for k, (half, start, end) in enumerate(self.spans.get(index, [])):
            offset = 1 if half == 0 else n_src + 1  # after the leading </s> of the half
            lo, hi = offset + start, offset + end
            target[lo:hi] = source[lo:hi]
            source[lo:hi] = self.dataset.mask_idx
            span_ids[lo:hi] = self._first_span[index] + k
        item.update(source=source, target=target, span_ids=span_ids)
        return item

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if samples:
            batch["span_ids"] = data_utils.collate_tokens([s["span_ids"] for s in samples], -1)
        return batch


@torch.no_grad()
def restore_spans(model, task, dataset: SpanMaskedDataset, batch_size: int = 64, with_nll: bool = False):
    """For every span, whether all its pieces were predicted exactly (and,
    with ``with_nll``, the summed negative log-likelihood and piece count of
    each span, for perplexities)."""
    correct = np.ones(len(dataset.span_info), dtype=bool)
    nll = np.zeros(len(dataset.span_info))
    pieces = np.zeros(len(dataset.span_info), dtype=np.int64)
    itr = task.get_batch_iterator(
        dataset, max_sentences=batch_size, required_batch_size_multiple=8, seed=1
    ).next_epoch_itr(shuffle=False)
    seen = np.zeros(len(dataset.span_info), dtype=bool)
    for batch in itr:
        masked = batch["target"].ne(dataset.dataset.pad)
        lm_logits, _, _ = model(**batch["net_input"], masked_tokens=masked)
        target = batch["target"][masked]
        right = (lm_logits.argmax(-1) == target).numpy()
        ids = batch["span_ids"][masked].numpy()
        np.logical_and.at(correct, ids, right)
        token_nll = torch.nn.functional.cross_entropy(lm_logits.float(), target, reduction="none").numpy()
        np.add.at(nll, ids, token_nll)
        np.add.at(pieces, ids, 1)
        seen[ids] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} masked spans were never scored")
    return (correct, nll, pieces) if with_nll else correct


def find_phrase(words: List[Tuple[str, int, int]], phrase: Sequence[str]) -> List[Tuple[int, int]]:
    """Token spans where the normalised words ``phrase`` occur in a row."""
    n = len(phrase)
    return [
        (words[i][1], words[i + n - 1][2])
        for i in range(len(words) - n + 1)
        if tuple(w for w, _, _ in words[i : i + n]) == tuple(phrase)
    ]


# what each probe condition masks: (half, annotation field)
CONDITIONS = {
    "en": ((0, "en"),),  # the English noun; the German side gives it away
    "de": ((1, "de"),),  # the German noun; its article/adjective may tell the gender
    "de_np": ((1, "de_np"),),  # the German noun phrase: only the image tells the sense
    "both": ((0, "en"), (1, "de_np")),  # English noun and German noun phrase
}


def ambiguous_word_spans(task, dataset, annotations: Sequence[List[dict]], condition: str) -> Spans:
    """Spans of the toy world's ambiguous words masked under ``condition``,
    per dataset index."""
    spans: Spans = {}
    for index in range(len(dataset)):
        pair = int(dataset.pair_indices[index])
        words = {0: word_spans(task.dictionary, dataset.src[pair].tolist()),
                 1: word_spans(task.dictionary, dataset.tgt[pair].tolist())}  # fmt: skip
        chosen = []
        for item in annotations[pair]:
            for half, key in CONDITIONS[condition]:
                phrase = [normalise(w) for w in item[key].split()]
                match = find_phrase(words[half], phrase)
                if len(match) != 1:
                    raise InputError(
                        f"{annotations_path(annotations)}:{pair + 1}: '{item[key]}' is {len(match)} times in the "
                        f"{'source' if half == 0 else 'target'} sentence of pair {pair}, not once "
                        "(annotations of another split or data-bin?)"
                    )
                chosen.append((half, *match[0]))
        if chosen:
            spans[index] = chosen
    return spans


def probe_ambiguous_words(
    model, task, split: str, annotations, conditions=tuple(CONDITIONS),
    image_orders=("aligned", "shuffled"), seeds=(1,),
) -> List[dict]:  # fmt: skip
    """Accuracy of restoring the toy world's masked ambiguous words (all
    pieces of a span right), per condition (see CONDITIONS) and image order."""
    rows = []
    for setting, base in _image_settings(task, split, image_orders, seeds):
        check_annotations(annotations, len(base.src), task, split)
        for condition in conditions:
            dataset = SpanMaskedDataset(base, ambiguous_word_spans(task, base, annotations, condition))
            rows.append(_scores_per_half(dict(setting, masked=condition), dataset, restore_spans(model, task, dataset)))
    return rows


class DropFinalToken(BaseWrapperDataset):
    """Sentences (ending in ``</s>``) without the token before ``</s>`` where
    it is ``token``: the last-word probe's captions lose their full stop."""

    def __init__(self, dataset, token: int):
        super().__init__(dataset)
        self.token = token
        self._sizes = np.array([len(self[i]) for i in range(len(dataset))])

    def __getitem__(self, index):
        item = self.dataset[index]
        if len(item) >= 2 and int(item[-2]) == self.token:
            return torch.cat([item[:-2], item[-1:]])
        return item

    @property
    def sizes(self):
        return self._sizes


LAST_WORD_CONDITIONS = {"en": (0,), "de": (1,), "both": (0, 1)}


def last_word_probe(model, task, split: str, conditions=tuple(LAST_WORD_CONDITIONS),
                    image_orders=("aligned", "shuffled"), seeds=(1,), full_stop: str = ".",
                    drop_full_stop: bool = False) -> List[dict]:  # fmt: skip
    """The paper's probe: the last word of the English half, the German half
    or both masked (the final full stop never counts as the last word);
    accuracy (all pieces right) and perplexity (per piece) per condition and
    image order. The paper also removed the full stop from the input
    (``drop_full_stop``); a model trained on captions that all end in one
    then mostly predicts the full stop at the last position, so by default
    it stays and the word before it is masked."""
    from ..data.tlm_dataset import TLMDataset

    rows = []
    dot = task.dictionary.index(full_stop)
    for setting, loaded in _image_settings(task, split, image_orders, seeds):
        src, tgt = loaded.src, loaded.tgt
        if drop_full_stop:
            src, tgt = DropFinalToken(src, dot), DropFinalToken(tgt, dot)
        base = TLMDataset(
            src, tgt, loaded.dictionary,
            (loaded.src_lang, loaded.tgt_lang, loaded.img_lang), loaded.masking, loaded.mask_idx,
            regions=loaded.regions, pair_indices=loaded.pair_indices, seed=loaded.seed,
            shuffle=False, deterministic=True,
        )  # fmt: skip
        for condition in conditions:
            spans: Spans = {}
            for index in range(len(base)):
                pair = int(base.pair_indices[index])
                halves = (base.src[pair].tolist(), base.tgt[pair].tolist())
                chosen = []
                for half in LAST_WORD_CONDITIONS[condition]:
                    words = [w for w in word_spans(task.dictionary, halves[half]) if w[0] != full_stop]
                    if words:
                        chosen.append((half, words[-1][1], words[-1][2]))
                if chosen:
                    spans[index] = chosen
            dataset = SpanMaskedDataset(base, spans)
            correct, nll, pieces = restore_spans(model, task, dataset, with_nll=True)
            row = dict(probe="last_word", **setting, masked=condition)
            rows.append(_scores_per_half(row, dataset, correct, nll, pieces))
    return rows


def _scores_per_half(row: dict, dataset: SpanMaskedDataset, correct, nll=None, pieces=None) -> dict:
    """``row`` with accuracy (and, given ``nll``, perplexity per piece) and
    the number of masked words of each half that had any."""
    halves = np.array([half for _, half in dataset.span_info])
    for half, name in ((0, "en"), (1, "de")):
        chosen = halves == half
        if chosen.any():
            row[f"{name}_acc"] = round(100.0 * float(correct[chosen].mean()), 2)
            if nll is not None:
                row[f"{name}_ppl"] = round(float(np.exp(nll[chosen].sum() / pieces[chosen].sum())), 3)
            row[f"{name}_words"] = int(chosen.sum())
    return row


def _image_settings(task, split: str, image_orders, seeds):
    """Loads ``split`` for each image setting (aligned once, shuffled once per
    seed) with no random text masking and unmasked images; yields the
    setting's row labels and the dataset."""
    for order in image_orders:
        for seed in seeds if order == "shuffled" else seeds[:1]:
            task.cfg.mask_prob = 0.0
            if hasattr(task.cfg, "image_order"):
                task.cfg.image_order, task.cfg.image_order_seed = order, seed
                task.cfg.valid_region_mask_prob = 0.0
            task.load_dataset(split)
            yield {"images": order, "seed": seed if order == "shuffled" else None}, task.dataset(split)

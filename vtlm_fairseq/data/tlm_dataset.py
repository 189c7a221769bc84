"""The (V)TLM training example: ``[</s> src </s>][</s> tgt </s>]`` with
language ids per token and positions restarting at the second sentence,
masked text, and (for VTLM) the image's regions with region masking."""

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset

from ..errors import InputError
from .batching import KeepAllBatchesMixin, first_epoch_seed
from .entity_masking import EntityMasker
from .masking import MASK, NOT_SELECTED, categories, check_probs, mask_text, select, swap_sources
from .region_dataset import RegionFeatureDataset
from .words import EntityWords

# the entity masks' draws, apart from the text and region masks of the same pair
_ENTITY_STREAM = 0xE7


@dataclass
class MaskingSettings:
    text_prob: float = 0.15
    text_probs: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    region_prob: float = 0.15
    region_probs: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    # "mask": a masked region's feature is zeroed and its projection replaced
    # by the [MASK] token embedding; "zero": the feature is only zeroed
    region_mask_type: str = "mask"
    # each English entity word, with its German translations in the pair,
    # replaced by [MASK] and predicted (EntityMasker); 0: off
    entity_prob: float = 0.0

    def __post_init__(self):
        self.text_probs = check_probs(self.text_probs, "text mask probabilities")
        self.region_probs = check_probs(self.region_probs, "region mask probabilities")
        if self.region_mask_type not in ("mask", "zero"):
            raise InputError(f"region mask type must be 'mask' or 'zero': {self.region_mask_type}")
        if not 0.0 <= self.entity_prob <= 1.0:
            raise InputError(f"entity mask probability must lie in [0, 1]: {self.entity_prob}")


def _pad_right(values: List[torch.Tensor], pad: int) -> torch.Tensor:
    """fairseq's data_utils.collate_tokens(values, pad) (right padding), in
    one op instead of a Python copy per sentence."""
    return torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=pad)


class TLMDataset(KeepAllBatchesMixin, FairseqDataset):
    """Item i is sentence pair ``pair_indices[i]`` of ``src``/``tgt`` (all
    pairs by default), masked with a generator seeded by (seed, epoch, pair),
    so masks are reproducible on resume and differ between epochs.
    ``deterministic`` fixes the seed across epochs (validation)."""

    def __init__(
        self,
        src,
        tgt,
        dictionary,
        lang_ids,  # (src, tgt, img) language ids
        masking: MaskingSettings,
        mask_idx: int,
        regions: Optional[RegionFeatureDataset] = None,
        pair_indices: Optional[np.ndarray] = None,
        seed: int = 1,
        shuffle: bool = True,
        deterministic: bool = False,
        entity_words: Optional[EntityWords] = None,
    ):
        super().__init__()
        if len(src) != len(tgt):
            raise ValueError(f"source has {len(src)} sentences, target {len(tgt)}")
        if regions is not None and len(regions) != len(src):
            raise ValueError(f"{len(regions)} images for {len(src)} sentence pairs")
        self.src, self.tgt, self.regions = src, tgt, regions
        self.dictionary = dictionary
        self.pad, self.eos = dictionary.pad(), dictionary.eos()
        self.src_lang, self.tgt_lang, self.img_lang = lang_ids
        self.masking = masking
        self.mask_idx = mask_idx
        if masking.entity_prob > 0 and entity_words is None:
            raise ValueError("entity masking needs the entity words")
        self.entity_masker = (
            EntityMasker(dictionary, entity_words, masking.entity_prob) if masking.entity_prob > 0 else None
        )
        self.pair_indices = (
            np.arange(len(src), dtype=np.int64) if pair_indices is None else np.asarray(pair_indices)
        )
        self.seed, self.shuffle, self.deterministic = seed, shuffle, deterministic
        # Masks depend on the epoch. DataLoader workers outlive an epoch
        # (fairseq reuses them), so they read the epoch from shared memory.
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()
        # RANDOM tokens: real words only (no specials, [MASK] or padding symbols)
        counts = np.asarray(dictionary.count)
        vocab = np.arange(len(dictionary))
        self.random_vocab = vocab[(vocab >= dictionary.nspecial) & (counts > 0) & (vocab != mask_idx)]
        # int32: two arrays a pair, kept for the whole run
        src_sizes = np.asarray(src.sizes, dtype=np.int32)[self.pair_indices]
        tgt_sizes = np.asarray(tgt.sizes, dtype=np.int32)[self.pair_indices]
        self.half_sizes = np.maximum(src_sizes, tgt_sizes) + 1
        self.sizes = src_sizes + tgt_sizes + 2 + (regions.store.num_regions if regions else 0)

    # -- fairseq dataset protocol --
    @property
    def epoch(self) -> int:
        return self._epoch.item()

    def set_epoch(self, epoch):
        self._epoch[0] = epoch

    def __len__(self):
        return len(self.pair_indices)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def size(self, index):
        return int(self.sizes[index])

    def ordered_indices(self):
        """Pairs by size, ties in a random order seeded as in epoch 1 (see
        ``first_epoch_seed``)."""
        if not self.shuffle:
            order = np.arange(len(self))
        else:
            with first_epoch_seed(self.seed):
                order = np.random.permutation(len(self))
        return order[np.argsort(self.sizes[order], kind="mergesort")]

    def filter_indices_by_size(self, indices, max_sizes):
        """Each half must fit the position table (positions restart per half)."""
        if max_sizes is None:
            return indices, []
        limit = max_sizes if isinstance(max_sizes, int) else min(max_sizes)
        keep = self.half_sizes[indices] <= limit
        return indices[keep], indices[~keep].tolist()

    @property
    def supports_prefetch(self):
        return False

    def _rng(self, *key: int) -> np.random.Generator:
        """A generator seeded by (seed, epoch, *key); epoch 0 when deterministic."""
        epoch = 0 if self.deterministic else self.epoch
        return np.random.default_rng([self.seed, epoch, *map(int, key)])

    def __getitem__(self, index):
        pair = int(self.pair_indices[index])
        src, tgt = self.src[pair].numpy(), self.tgt[pair].numpy()
        tokens = np.concatenate([[self.eos], src, [self.eos], tgt]).astype(np.int64)
        n_src = len(src) + 1
        langs = np.full(len(tokens), self.tgt_lang, dtype=np.int64)
        langs[:n_src] = self.src_lang
        positions = np.concatenate([np.arange(n_src), np.arange(len(tokens) - n_src)])
        eligible = np.ones(len(tokens), dtype=bool)
        eligible[0] = False  # never the first </s>
        rng = self._rng(pair)
        source, cat = mask_text(
            rng, tokens, eligible, self.masking.text_prob, self.masking.text_probs,
            self.mask_idx, self.random_vocab,
        )  # fmt: skip
        if self.entity_masker is not None:
            # after the text draws, from a stream of its own: the other masks stay as without it
            chosen = self.entity_masker.positions(self._rng(pair, _ENTITY_STREAM), src, tgt, n_src + 1)
            source[chosen], cat[chosen] = self.mask_idx, MASK
        target = np.where(cat != NOT_SELECTED, tokens, self.pad)
        item = {
            "id": index,
            "source": torch.from_numpy(source),
            "target": torch.from_numpy(target),
            "langs": torch.from_numpy(langs),
            "positions": torch.from_numpy(positions),
        }
        if self.regions is not None:
            regions = self.regions[pair]
            # drawn over all the store's slots (padding never selected), so
            # that the draws do not depend on how many regions an image has
            real = np.zeros(self.regions.store.num_regions, dtype=bool)
            real[: len(regions["mask"])] = True
            chosen = select(rng, real, self.masking.region_prob)
            item["regions"] = regions
            item["region_category"] = torch.from_numpy(categories(rng, chosen, self.masking.region_probs))
        return item

    def collater(self, samples):
        if not samples:
            return {}
        pad = self.pad
        ids = torch.LongTensor([s["id"] for s in samples])
        source = _pad_right([s["source"] for s in samples], pad)
        batch = {
            "id": ids,
            "nsentences": len(samples),
            "net_input": {
                "src_tokens": source,
                "src_lengths": torch.LongTensor([len(s["source"]) for s in samples]),
                "src_langs": _pad_right([s["langs"] for s in samples], 0),
                "src_positions": _pad_right([s["positions"] for s in samples], 0),
            },
            "target": _pad_right([s["target"] for s in samples], pad),
        }
        batch["ntokens"] = int(source.ne(pad).sum())
        if self.regions is not None:
            region_input, batch["region_target"] = self._collate_regions(samples, ids)
            batch["net_input"].update(region_input)
        return batch

    def _collate_regions(self, samples, ids):
        # fresh tensors, the batch's own: masked in place
        regions = self.regions.collater([s["regions"] for s in samples])
        width = regions["mask"].shape[1]
        category = torch.stack([s["region_category"][:width] for s in samples])
        features = regions["features"]
        cat = category.numpy()
        # RANDOM regions take the feature of a random real region of the batch,
        # drawn from a generator seeded by the batch's first pair
        rng = self._rng(self.pair_indices[int(ids[0])], 1)
        sources = torch.from_numpy(swap_sources(rng, cat, regions["mask"].numpy()))
        # rows addressed by their flat index: a boolean mask over the batch
        # would scan all of its features
        flat = features.view(-1, features.shape[-1])
        swap = torch.nonzero(sources.view(-1) >= 0).squeeze(1)
        if len(swap):
            # the gather copies every source row before any row is overwritten
            flat[swap] = flat[sources.view(-1)[swap]]
        masked = category == MASK
        flat[torch.nonzero(masked.view(-1)).squeeze(1)] = 0.0
        target = torch.where(category != NOT_SELECTED, regions["classes"], -1)
        region_input = {
            "region_features": features,
            "region_boxes": regions["boxes"],  # boxes are never masked
            "region_mask": regions["mask"],
            # projection replaced by the [MASK] embedding (mask type "mask")
            "region_masked_input": masked if self.masking.region_mask_type == "mask" else torch.zeros_like(masked),
        }
        return region_input, target

"""Task ``multimodal_translation``: fairseq's translation task whose encoder
input is the image's regions followed by ``</s> src </s>``; with no feature
store it is plain NMT on the same code path."""

import logging
import os
from collections import deque
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.data import PrependTokenDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..data.feature_store import FeatureStore
from ..data.multimodal_pair_dataset import IndexSubsetDataset, MultimodalPairDataset
from ..data.region_dataset import RegionFeatureDataset
from ..data.splits import MASK_SYMBOL, load_pair_text, load_split_regions, load_vocabulary, split_data_path
from ..languages import language_ids
from .image_options import ImageOptions

logger = logging.getLogger(__name__)


@dataclass
class MultimodalTranslationConfig(TranslationConfig, ImageOptions):
    """Without --region-features: text-only NMT on the same code path."""

    left_pad_source: bool = field(default=False, metadata={"help": "pad the source on the left"})
    sort_eval_by_length: bool = field(
        default=False,
        metadata={"help": "batch evaluation splits by length (default: corpus order, so outputs are too)"},
    )


@register_task("multimodal_translation", dataclass=MultimodalTranslationConfig)
class MultimodalTranslationTask(TranslationTask):
    cfg: MultimodalTranslationConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.mask_idx = src_dict.index(MASK_SYMBOL)
        self.lang_ids = language_ids(cfg.source_lang, cfg.target_lang)
        self.store = FeatureStore(cfg.region_features) if cfg.region_features else None
        if self.store is not None:
            logger.info(
                "region features: %s (%d images, %d regions x %d dims)",
                cfg.region_features, len(self.store), self.store.num_regions, self.store.feature_dim,
            )  # fmt: skip
        # fairseq-interactive: image names of the lines, regions of the batches
        self._interactive_images = deque()
        self._interactive_batches = deque()

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = utils.split_paths(cfg.data)
        if cfg.source_lang is None or cfg.target_lang is None:
            cfg.source_lang, cfg.target_lang = data_utils.infer_language_pair(paths[0])
        # the (V)TLM vocabulary: the joined dictionary plus <mask>
        dictionary = load_vocabulary(os.path.join(paths[0], f"dict.{cfg.source_lang}.txt"))
        logger.info("[%s-%s] joined dictionary: %d types", cfg.source_lang, cfg.target_lang, len(dictionary))
        return cls(cfg, dictionary, dictionary)

    @property
    def region_feature_dim(self):
        return self.store.feature_dim if self.store is not None else None

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        data_path = split_data_path(self.cfg.data, epoch)
        src_text, target = load_pair_text(data_path, split, self.cfg.source_lang, self.cfg.target_lang, self.src_dict)
        regions, pair_indices = load_split_regions(self.store, data_path, split, len(src_text), self.cfg)
        # the reference's source is "</s> src </s>"
        source = PrependTokenDataset(src_text, self.src_dict.eos())
        if pair_indices is not None and len(pair_indices) < len(src_text):
            source, target = IndexSubsetDataset(source, pair_indices), IndexSubsetDataset(target, pair_indices)
        training = split == self.cfg.train_subset
        self.datasets[split] = MultimodalPairDataset(
            source, source.sizes, self.src_dict, target, target.sizes, self.tgt_dict,
            left_pad_source=self.cfg.left_pad_source,
            left_pad_target=self.cfg.left_pad_target,
            shuffle=training,
            regions=regions,
            pair_indices=pair_indices,
            corpus_order=not training and not self.cfg.sort_eval_by_length,
        )  # fmt: skip
        logger.info(
            "%s %s: %d sentence pairs%s", data_path, split, len(self.datasets[split]),
            f" with images ({self.cfg.image_order})" if regions is not None else "",
        )  # fmt: skip

    # -- fairseq-interactive --
    # Each input line is "IMAGE_NAME<TAB>sentence". fairseq-interactive keeps
    # only the tokens of the batches our dataset makes, so the dataset hands
    # each batch's regions to the task, and inference_step puts them back
    # (batches are made and translated one after the other).
    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        if self.store is not None:
            sentences = []
            for lineno, line in enumerate(lines, start=1):
                if "\t" not in line:
                    raise ValueError(f"input line {lineno}: expected 'IMAGE_NAME<TAB>sentence', got {line!r}")
                name, sentence = line.split("\t", 1)
                self._interactive_images.append(name.strip())
                sentences.append(sentence)
            lines = sentences
        return super().get_interactive_tokens_and_lengths(lines, encode_fn)

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        source = [utils.strip_pad(t, self.src_dict.pad()) for t in src_tokens]
        source = [t.new_tensor([self.src_dict.eos()] + t.tolist()) for t in source]
        regions = None
        if self.store is not None:
            names = [self._interactive_images.popleft() for _ in source]
            regions = RegionFeatureDataset(self.store, names, source="interactive input")
        return MultimodalPairDataset(
            source, [len(t) for t in source], self.src_dict,
            tgt_dict=self.tgt_dict, constraints=constraints,
            left_pad_source=self.cfg.left_pad_source, regions=regions, corpus_order=True,
            on_batch=self._interactive_batches.append if regions is not None else None,
        )  # fmt: skip

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        net_input = sample["net_input"]
        if self.store is not None and "region_features" not in net_input:
            batch = self._interactive_batches.popleft()
            if not torch.equal(batch["net_input"]["src_tokens"], net_input["src_tokens"]):
                raise RuntimeError("interactive batch and its regions are out of step")
            net_input.update({k: v for k, v in batch["net_input"].items() if k.startswith("region_")})
        return super().inference_step(generator, models, sample, prefix_tokens, constraints)

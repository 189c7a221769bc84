"""Task ``visual_translation_lm`` (alias ``visual_tlm``): TLM plus the image's
regions, prepended to the pair, with masked region classification."""

import logging
import os
from dataclasses import dataclass, field, replace
from typing import List

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.feature_store import open_store
from ..data.splits import load_split_regions, split_data_path
from ..data.tlm_dataset import MaskingSettings
from ..errors import InputError
from .image_options import ImageOptions
from .translation_lm import TranslationLMConfig, TranslationLMTaskBase

logger = logging.getLogger(__name__)


@dataclass
class VisualTranslationLMConfig(TranslationLMConfig, ImageOptions):
    region_mask_prob: float = field(
        default=0.15, metadata={"help": "share of regions to classify (0 turns MRC off)"}
    )
    region_mask_probs: List[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        metadata={"help": "of the classified regions: masked, kept, swapped with a region of the batch"},
    )
    region_mask_type: ChoiceEnum(["mask", "zero"]) = field(
        default="mask",
        metadata={"help": "mask: zero the feature and use the [MASK] embedding; zero: zero the feature only"},
    )
    mrc_unmasked_inputs: bool = field(
        default=False,
        metadata={"help": "the paper's '0%% visual masking': classify regions whose inputs are never masked"},
    )
    valid_region_mask_prob: float = field(
        default=0.0,
        metadata={"help": "regions classified in validation (the reference: 0, images unmasked)"},
    )


@register_task("visual_translation_lm", dataclass=VisualTranslationLMConfig)
class VisualTranslationLMTask(TranslationLMTaskBase):
    cfg: VisualTranslationLMConfig

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        # the store: --region-features, else DATA/features.h5
        path = cfg.region_features or os.path.join(split_data_path(cfg.data, epoch=1), "features.h5")
        if not cfg.region_features and not os.path.isfile(path):
            raise InputError(f"{path}: no region-feature store (give --region-features)")
        self.store = open_store(path, max_regions=cfg.max_regions)
        logger.info(
            "region features: %s (%d images, %d regions x %d dims, %s)",
            path, len(self.store), self.store.num_regions, self.store.feature_dim, self.store.dtype,
        )  # fmt: skip

    @property
    def region_feature_dim(self):
        return self.store.feature_dim

    def masking_settings(self, training: bool) -> MaskingSettings:
        if training:
            prob = self.cfg.region_mask_prob
            probs = [0.0, 1.0, 0.0] if self.cfg.mrc_unmasked_inputs else self.cfg.region_mask_probs
        else:  # validation: masked inputs only, like the text
            prob, probs = self.cfg.valid_region_mask_prob, [1.0, 0.0, 0.0]
        return replace(
            super().masking_settings(training),
            region_prob=prob,
            region_probs=probs,
            region_mask_type=self.cfg.region_mask_type,
        )

    def load_regions(self, split, data_path, num_pairs):
        return load_split_regions(self.store, data_path, split, num_pairs, self.cfg)


@register_task("visual_tlm", dataclass=VisualTranslationLMConfig)
class VisualTLMTask(VisualTranslationLMTask):
    """Alias of ``visual_translation_lm``."""

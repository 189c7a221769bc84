"""Task ``translation_lm`` (alias ``tlm``): masked LM over concatenated
sentence pairs of a joined-dictionary translation data-bin."""

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.splits import MASK_SYMBOL, load_pair_text, load_vocabulary, split_data_path
from ..data.tlm_dataset import MaskingSettings, TLMDataset
from ..data.words import EntityWords
from ..errors import InputError
from ..languages import IMG_LANG, language_ids

logger = logging.getLogger(__name__)


@dataclass
class TranslationLMConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "data-bin folder(s), colon-separated (one per epoch)"})
    source_lang: str = field(default="en", metadata={"help": "first sentence of each pair"})
    target_lang: str = field(default="de", metadata={"help": "second sentence of each pair"})
    mask_prob: float = field(default=0.15, metadata={"help": "share of text tokens to predict"})
    mask_probs: List[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        metadata={"help": "of the predicted tokens: [MASK], kept, random token"},
    )
    entity_mask_prob: float = field(
        default=0.0,
        metadata={"help": "training: each English entity word (--entity-words) is masked with this probability "
                  "together with its German translations in the pair (all their pieces, always [MASK]), on "
                  "top of --mask-prob, so that only the image and the context tell what it was (default: 0, off)"},
    )
    entity_words: Optional[str] = field(
        default=None,
        metadata={"help": "entity word list for --entity-mask-prob (JSON: the probes' format, or a toy world's "
                  "lexicon.json; default: the Multi30k list, resources/entity_words.en-de.json)"},
    )
    max_positions: int = field(default=512, metadata={"help": "longest sentence (+1), per half of a pair"})
    train_subset: str = II("dataset.train_subset")
    seed: int = II("common.seed")


class TranslationLMTaskBase(FairseqTask):
    """Shared by ``translation_lm`` and ``visual_translation_lm``."""

    cfg: TranslationLMConfig

    def __init__(self, cfg, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.mask_idx = dictionary.index(MASK_SYMBOL)  # setup_task loads it with <mask>
        self.lang_ids = language_ids(cfg.source_lang, cfg.target_lang)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = utils.split_paths(cfg.data)
        if not paths:
            raise InputError("--data is empty")
        dict_path = os.path.join(paths[0], f"dict.{cfg.source_lang}.txt")
        dictionary = load_vocabulary(dict_path)
        other = os.path.join(paths[0], f"dict.{cfg.target_lang}.txt")
        if os.path.isfile(other) and load_vocabulary(other).symbols != dictionary.symbols:
            raise InputError(f"{dict_path} and {other} differ: (V)TLM needs a joined dictionary")
        logger.info("dictionary: %d types (with <mask>)", len(dictionary))
        return cls(cfg, dictionary)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return self.cfg.max_positions

    def build_model(self, cfg, from_checkpoint=False):
        arch = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
        if arch and str(arch).startswith("vtlm_translation"):
            raise InputError(
                f"the checkpoint holds a '{arch}' translation model: --task tlm/visual_tlm are for (V)TLM "
                "pre-training; translate with --task multimodal_translation"
            )
        return super().build_model(cfg, from_checkpoint)

    def build_criterion(self, cfg, from_checkpoint=False):
        name = getattr(cfg, "_name", None)
        if name != "vtlm_loss":
            raise InputError(f"--criterion {name}: (V)TLM pre-training trains with --criterion vtlm_loss")
        return super().build_criterion(cfg, from_checkpoint)

    def build_generator(self, models, args, **kwargs):
        raise InputError("a (V)TLM does not translate: fine-tune it with --task multimodal_translation "
                         "(--pretrained-checkpoint), or probe it with vtlm-probe")  # fmt: skip

    region_feature_dim = None  # no regions: the model builds no region layers

    def masking_settings(self, training: bool) -> MaskingSettings:
        return MaskingSettings(
            text_prob=self.cfg.mask_prob,
            # validation: a fixed seed and [MASK] only, as the reference
            text_probs=self.cfg.mask_probs if training else [1.0, 0.0, 0.0],
            region_prob=0.0,
            entity_prob=self.cfg.entity_mask_prob if training else 0.0,
        )

    def load_regions(self, split, data_path, num_pairs):
        """(RegionFeatureDataset, pair indices to keep) or (None, None)."""
        return None, None

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        data_path = split_data_path(self.cfg.data, epoch)
        src, tgt = load_pair_text(data_path, split, self.cfg.source_lang, self.cfg.target_lang, self.dictionary)
        regions, pair_indices = self.load_regions(split, data_path, len(src))
        training = split == self.cfg.train_subset
        masking = self.masking_settings(training)
        entity_words = EntityWords.load(self.cfg.entity_words) if masking.entity_prob > 0 else None
        if entity_words is not None:
            logger.info("entity masking: each of %d English entity words with %.2f, with its German "
                        "translations", len(entity_words.german), masking.entity_prob)  # fmt: skip
        self.datasets[split] = TLMDataset(
            src,
            tgt,
            self.dictionary,
            (self.lang_ids[self.cfg.source_lang], self.lang_ids[self.cfg.target_lang], self.lang_ids[IMG_LANG]),
            masking,
            self.mask_idx,
            regions=regions,
            pair_indices=pair_indices,
            seed=self.cfg.seed,
            shuffle=training,
            deterministic=not training,
            entity_words=entity_words,
        )
        logger.info(
            "%s %s: %d sentence pairs%s",
            data_path,
            split,
            len(self.datasets[split]),
            " with images" if regions is not None else "",
        )


@register_task("translation_lm", dataclass=TranslationLMConfig)
class TranslationLMTask(TranslationLMTaskBase):
    pass


@register_task("tlm", dataclass=TranslationLMConfig)
class TLMTask(TranslationLMTaskBase):
    """Alias of ``translation_lm``."""

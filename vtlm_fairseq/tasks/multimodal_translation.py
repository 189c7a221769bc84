"""Task ``multimodal_translation``: fairseq's translation task whose encoder
input is the image's regions followed by ``</s> src </s>``; with no feature
store it is plain NMT on the same code path. It initialises a fresh
``vtlm_translation`` model from ``--pretrained-checkpoint`` when fine-tuning
starts (not on resume, never when loading a trained model)."""

import functools
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import PrependTokenDataset, data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from fairseq.utils import safe_getattr
from omegaconf import II

from ..data.feature_store import open_store
from ..data.multimodal_pair_dataset import IndexSubsetDataset, MultimodalPairDataset
from ..data.region_dataset import RegionFeatureDataset
from ..data.source_degradation import DegradationSettings, SourceDegrader
from ..data.words import EntityWords
from ..data.splits import MASK_SYMBOL, load_pair_text, load_split_regions, load_vocabulary, split_data_path
from ..errors import InputError
from ..languages import language_ids
from .image_options import ImageOptions

logger = logging.getLogger(__name__)


@dataclass
class MultimodalTranslationConfig(TranslationConfig, ImageOptions):
    """Without --region-features: text-only NMT on the same code path."""

    left_pad_source: bool = field(default=False, metadata={"help": "pad the source on the left (default: False)"})
    sort_eval_by_length: bool = field(
        default=False,
        metadata={"help": "batch evaluation splits by length (default: corpus order, so outputs are too)"},
    )
    # where fairseq-train restores a run from (checkpoint_utils.load_checkpoint):
    # a resumed fine-tuning run is not initialised from --pretrained-checkpoint
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")
    continue_once: Optional[str] = II("checkpoint.continue_once")
    finetune_from_model: Optional[str] = II("checkpoint.finetune_from_model")
    checkpoint_suffix: str = II("checkpoint.checkpoint_suffix")
    seed: int = II("common.seed")
    # source degradation (training split only): the image must make up for it
    source_entity_mask_prob: float = field(
        default=0.0,
        metadata={"help": "training: each entity word of a source (--entity-words: things an image shows) is "
                  "masked or deleted (--source-mask-mode) with this probability, drawn anew each epoch, so that "
                  "the model learns to take it from the image (default: 0, off)"},
    )
    source_word_mask_prob: float = field(
        default=0.0,
        metadata={"help": "training: each other source word (not punctuation) is masked or deleted with this "
                  "probability (default: 0, off)"},
    )
    source_mask_mode: ChoiceEnum(["mask", "delete"]) = field(
        default="mask",
        metadata={"help": "mask: a degraded word becomes one <mask>; delete: it is removed (default: mask)"},
    )
    entity_words: Optional[str] = field(
        default=None,
        metadata={"help": "entity word list for --source-entity-mask-prob (JSON: the probes' format, or a toy "
                  "world's lexicon.json; default: the Multi30k list, resources/entity_words.en-de.json)"},
    )


def _tensor_state(meter):
    """An AverageMeter's state with its numpy arrays as tensors."""
    state = type(meter).state_dict(meter)
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


@register_task("multimodal_translation", dataclass=MultimodalTranslationConfig)
class MultimodalTranslationTask(TranslationTask):
    cfg: MultimodalTranslationConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.mask_idx = src_dict.index(MASK_SYMBOL)
        self.lang_ids = language_ids(cfg.source_lang, cfg.target_lang)
        self.store = open_store(cfg.region_features, max_regions=cfg.max_regions) if cfg.region_features else None
        if self.store is not None:
            logger.info(
                "region features: %s (%d images, %d regions x %d dims)",
                cfg.region_features, len(self.store), self.store.num_regions, self.store.feature_dim,
            )  # fmt: skip
        # fairseq-interactive: lines read so far, (image names, ids) of the
        # good lines of each buffer, regions of the batches
        self._interactive_lines = 0
        self._interactive_inputs = deque()
        self._interactive_batches = deque()

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = utils.split_paths(cfg.data)
        if not paths or not os.path.isdir(paths[0]):
            raise InputError(f"{cfg.data}: no such data-bin folder")
        if cfg.source_lang is None or cfg.target_lang is None:
            cfg.source_lang, cfg.target_lang = data_utils.infer_language_pair(paths[0])
        if cfg.source_lang is None:
            raise InputError(
                f"{paths[0]}: no binarised split (NAME.SRC-TGT.*) to infer the languages from: "
                "give --source-lang and --target-lang"
            )
        # the (V)TLM vocabulary: the joined dictionary plus <mask>
        dictionary = load_vocabulary(os.path.join(paths[0], f"dict.{cfg.source_lang}.txt"))
        logger.info("[%s-%s] joined dictionary: %d types", cfg.source_lang, cfg.target_lang, len(dictionary))
        return cls(cfg, dictionary, dictionary)

    @property
    def region_feature_dim(self):
        return self.store.feature_dim if self.store is not None else None

    def build_model(self, cfg, from_checkpoint=False):
        """fairseq-train (``from_checkpoint`` False) initialises a fresh
        model from --pretrained-checkpoint, unless the run resumes from a
        checkpoint of its own; loading a trained model never reads it."""
        arch = safe_getattr(cfg, "_name", None) or safe_getattr(cfg, "arch", None)
        if arch and not str(arch).startswith("vtlm_translation") and str(arch).startswith("vtlm"):
            raise InputError(
                f"the checkpoint holds a '{arch}' model, a (V)TLM of pre-training: --task "
                "multimodal_translation translates with a fine-tuned NMT/MMT (vtlm_translation_*); "
                "fine-tune it first (--pretrained-checkpoint), or probe it with vtlm-probe"
            )
        model = super().build_model(cfg, from_checkpoint)
        pretrained = safe_getattr(cfg, "pretrained_checkpoint", None)
        if pretrained and not from_checkpoint:
            restored = self.restored_checkpoint()
            if restored is not None:
                logger.info("not initialising from --pretrained-checkpoint %s: the run resumes from %s",
                            pretrained, restored)  # fmt: skip
            elif not os.path.isfile(pretrained):
                raise InputError(f"{pretrained}: no such file (--pretrained-checkpoint, the (V)TLM to fine-tune)")
            else:
                model.load_pretrained(pretrained, cross_attention=not cfg.no_cross_attention_init)
        return model

    def build_criterion(self, cfg, from_checkpoint=False):
        name = safe_getattr(cfg, "_name", None)
        if name == "vtlm_loss":
            raise InputError("--criterion vtlm_loss is the (V)TLM pre-training loss: translation trains with "
                             "cross_entropy or label_smoothed_cross_entropy")  # fmt: skip
        return super().build_criterion(cfg, from_checkpoint)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        # --eval-bleu: fairseq keeps the n-gram statistics as numpy arrays,
        # which every checkpoint saves with the meters; torch's weights-only
        # loading (resume, fairseq-generate) refuses them: save them as tensors
        for meters in metrics.get_active_aggregators():
            for key in ("_bleu_counts", "_bleu_totals"):
                meter = meters.get(key)
                if meter is not None and "state_dict" not in vars(meter):
                    meter.state_dict = functools.partial(_tensor_state, meter)

    def restored_checkpoint(self) -> Optional[str]:
        """The checkpoint fairseq-train will restore the model from, chosen
        as checkpoint_utils.load_checkpoint does, when that file exists."""
        cfg = self.cfg
        suffix = cfg.checkpoint_suffix or ""
        if cfg.restore_file == "checkpoint_last.pt":  # fairseq's default: the run's own last checkpoint
            path = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
            if not os.path.exists(path):
                path = cfg.continue_once if cfg.continue_once is not None else cfg.finetune_from_model
        else:
            path = cfg.restore_file.replace(".pt", suffix + ".pt")
        return path if path and os.path.isfile(path) else None

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
            degrade_source=self.source_degrader() if training else None,
            left_pad_source=self.cfg.left_pad_source,
            left_pad_target=self.cfg.left_pad_target,
            shuffle=training,
            regions=regions,
            pair_indices=pair_indices,
            corpus_order=not training and not self.cfg.sort_eval_by_length,
            order_seed=self.cfg.seed,
        )  # fmt: skip
        logger.info(
            "%s %s: %d sentence pairs%s", data_path, split, len(self.datasets[split]),
            f" with images ({self.cfg.image_order})" if regions is not None else "",
        )  # fmt: skip

    def source_degrader(self) -> Optional[SourceDegrader]:
        """The training sources' degradation, or None when it is off."""
        settings = DegradationSettings(self.cfg.source_entity_mask_prob, self.cfg.source_word_mask_prob,
                                       self.cfg.source_mask_mode)  # fmt: skip
        if not settings.active:
            return None
        words = EntityWords.load(self.cfg.entity_words)
        logger.info("training sources degraded (%s): entity words %.2f, other words %.2f; %d entity words",
                    settings.mode, settings.entity_prob, settings.word_prob, len(words.german))  # fmt: skip
        return SourceDegrader(self.src_dict, words, settings, self.mask_idx, self.cfg.seed)

    # -- fairseq-interactive --
    # Each input line is "IMAGE_NAME<TAB>sentence" (with a store) or a
    # sentence. A bad line is reported and left out; the others keep their
    # ids, which fairseq-interactive numbers its output by (start of the
    # buffer + id in the buffer's dataset). fairseq-interactive keeps only the
    # tokens of the batches our dataset makes, so the dataset hands each
    # batch's regions to the task, and inference_step puts them back
    # (batches are made and translated one after the other).
    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        first = self._interactive_lines  # fairseq-interactive's start_id of this buffer
        self._interactive_lines += len(lines)
        names, ids, sentences = [], [], []
        for i, line in enumerate(lines):
            try:
                name, sentence = self.parse_interactive_line(line)
            except InputError as e:
                logger.error("input line %d: %s; skipped (no output for id %d)", first + i + 1, e, first + i)
                continue
            names.append(name)
            ids.append(i)
            sentences.append(sentence)
        self._interactive_inputs.append((names, ids))
        return super().get_interactive_tokens_and_lengths(sentences, encode_fn)

    def parse_interactive_line(self, line: str):
        """(image name or None, sentence) of one input line; InputError
        saying what is wrong with it."""
        if self.store is None:
            if "\t" in line:
                raise InputError("a tab: 'IMAGE_NAME<TAB>sentence' lines need --region-features (text-only here)")
            return None, line
        fields = line.split("\t")
        if len(fields) == 1:
            if not line.strip():
                raise InputError("empty line, expected 'IMAGE_NAME<TAB>sentence'")
            if line.strip() in self.store:
                raise InputError(f"image '{line.strip()}' without a sentence, expected 'IMAGE_NAME<TAB>sentence'")
            raise InputError(f"no tab, expected 'IMAGE_NAME<TAB>sentence': {line!r}")
        if len(fields) > 2:
            raise InputError(f"{len(fields) - 1} tabs, expected 'IMAGE_NAME<TAB>sentence' (one tab): {line!r}")
        name, sentence = fields[0].strip(), fields[1]
        if not name:
            raise InputError("no image name before the tab")
        if name not in self.store:
            raise InputError(f"image '{name}' is not in {self.store.path}")
        if not sentence.strip():
            raise InputError(f"image '{name}' with an empty sentence")
        return name, sentence

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        if constraints is not None and self.store is not None:
            raise InputError("--constraints cannot be used with --region-features: both take the input lines' tabs")
        # the good lines of the buffer get_interactive_tokens_and_lengths read
        names, ids = self._interactive_inputs.popleft() if self._interactive_inputs else (None, None)
        if ids is None and self.store is not None:
            raise RuntimeError("with a feature store, give the lines through get_interactive_tokens_and_lengths")
        source = [utils.strip_pad(t, self.src_dict.pad()) for t in src_tokens]
        source = [t.new_tensor([self.src_dict.eos()] + t.tolist()) for t in source]
        regions = None
        if self.store is not None:
            regions = RegionFeatureDataset(self.store, names, source="interactive input")
        return MultimodalPairDataset(
            source, [len(t) for t in source], self.src_dict,
            tgt_dict=self.tgt_dict, constraints=constraints,
            left_pad_source=self.cfg.left_pad_source, regions=regions, corpus_order=True,
            item_ids=ids,
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

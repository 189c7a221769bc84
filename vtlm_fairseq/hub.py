"""Python API in the style of fairseq's hub interface: load a trained
NMT/MMT model and translate raw sentences, each with its image.

    from vtlm_fairseq.hub import VTLMTranslator
    mt = VTLMTranslator.from_pretrained("checkpoints/mmt", data="data-bin/multi30k",
                                        region_features="features.h5")
    mt.translate("A man holds a bat.", images="1000092795.jpg")

The text goes through the data-bin's own preparation (Moses pipeline with the
same lowercasing/accent settings, its BPE codes); the output is detokenised.

``load_checkpoint`` loads any checkpoint of the plugin (TLM, VTLM, NMT, MMT)
safely, for this API and for the probes.
"""

import json
import logging
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from fairseq.data import data_utils
from fairseq.dataclass.configs import GenerationConfig
from sacremoses import MosesDetokenizer

from .checkpoints import load_trained_model, read_fairseq_checkpoint
from .data.bpe import BPEApplier
from .data.feature_store import RegionFeatures, check_regions
from .data.region_dataset import collate_regions, region_item
from .data.splits import split_data_path
from .data.tokenization import MosesPipeline
from .errors import InputError

logger = logging.getLogger(__name__)

Image = Union[str, RegionFeatures]

# what a checkpoint is, from its task and whether its model has region layers
KINDS = {
    "TLM": "a pre-trained TLM",
    "VTLM": "a pre-trained VTLM",
    "NMT": "a text-only translation model (NMT)",
    "MMT": "a multimodal translation model (MMT)",
}
PRETRAINING_TASKS = ("translation_lm", "tlm", "visual_translation_lm", "visual_tlm")
TRANSLATION_TASKS = ("multimodal_translation",)


class LoadedModel(NamedTuple):
    model: torch.nn.Module  # in eval mode
    task: object
    kind: str  # a key of KINDS


def checkpoint_kind(path, state: Dict) -> str:
    """TLM, VTLM, NMT or MMT; InputError for a checkpoint of another task."""
    name = (state["cfg"].get("task") or {}).get("_name")
    visual = any(".region_embedding." in key for key in state["model"])
    if name in PRETRAINING_TASKS:
        return "VTLM" if visual else "TLM"
    if name in TRANSLATION_TASKS:
        return "MMT" if visual else "NMT"
    raise InputError(f"{path}: a checkpoint of task '{name}', not a TLM, VTLM, NMT or MMT of this plugin")


def load_checkpoint(path, overrides: Optional[Dict] = None, kinds: Sequence[str] = tuple(KINDS),
                    purpose: str = "this") -> LoadedModel:  # fmt: skip
    """A checkpoint of one of ``kinds``, read safely (weights-only, an
    allow-list), with ``data``/``region_features`` overrides. A
    ``region_features`` override is dropped for a model without region
    layers (TLM, NMT), so one set of overrides serves text-only and visual
    checkpoints alike. ``purpose`` names the user, for the messages."""
    overrides = {k: v for k, v in (overrides or {}).items() if v}
    state = read_fairseq_checkpoint(path, overrides)
    kind = checkpoint_kind(path, state)
    if kind not in kinds:
        raise InputError(f"{path}: {KINDS[kind]}; {purpose} takes {' or '.join(kinds)} checkpoints")
    task_cfg = state["cfg"]["task"]
    if kind in ("TLM", "NMT") and overrides.pop("region_features", None):
        logger.info("%s has no region layers: using it without images", path)
        for config in (task_cfg, state.get("args")):  # fairseq builds the task from args where there are any
            if config is not None and "region_features" in config:
                config.region_features = None
    data = split_data_path(task_cfg.data, epoch=1)
    if not os.path.isdir(data):
        recorded = "" if "data" in overrides else f" (the one {path} was trained on; give the data-bin)"
        raise InputError(f"{data}: no such data-bin folder{recorded}")
    store = task_cfg.get("region_features")
    if kind in ("VTLM", "MMT") and store and "region_features" not in overrides and not os.path.isfile(store):
        raise InputError(f"{store}: no such feature store (the one {path} was trained with; give the feature store)")
    models, _, task = load_trained_model(path, overrides, state=state)  # names the file in its errors
    return LoadedModel(models[0].eval(), task, kind)


def data_bin_manifest(data_dir: str) -> Optional[Dict]:
    """The data-bin's prepare.json (how vtlm-prepare made it: ``config`` and
    ``splits``); None where it has none."""
    manifest = os.path.join(data_dir, "prepare.json")
    if not os.path.isfile(manifest):
        return None
    try:
        with open(manifest, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("config", "splits")):
            raise ValueError("no 'config' and 'splits' objects")
    except (OSError, ValueError) as e:
        raise InputError(f"{manifest}: not a prepare.json of vtlm-prepare ({e})") from None
    return data


def data_bin_settings(data_dir: str) -> Dict[str, bool]:
    """The Moses settings the data-bin was prepared with (vtlm-prepare's
    defaults where it has no prepare.json)."""
    settings = {"lowercase": True, "strip_accents": True}
    config = (data_bin_manifest(data_dir) or {}).get("config", {})
    return {k: bool(config.get(k, v)) for k, v in settings.items()}


class VTLMTranslator:
    def __init__(self, models, task, data_dir: str, beam: int = 8, lenpen: float = 1.0, source: str = "the model"):
        """``source`` names the model (its checkpoint) in error messages."""
        self.models = [m.eval() for m in models]
        self.task = task
        self.source = source
        self.dictionary = task.source_dictionary
        src, tgt = task.cfg.source_lang, task.cfg.target_lang
        self.tokenize = MosesPipeline(src, **data_bin_settings(data_dir))
        codes = os.path.join(data_dir, "bpe.codes")
        if not os.path.isfile(codes):
            raise InputError(f"{codes}: no such file; the data-bin's BPE codes are needed to encode raw text")
        self.bpe = BPEApplier(codes)
        self.detokenizer = MosesDetokenizer(lang=tgt)
        if beam < 1:
            raise InputError(f"beam must be at least 1, not {beam}")
        # the reference's decoding: beam 8, length penalty 1, 1.5 x source + 10
        gen = GenerationConfig(beam=beam, lenpen=lenpen, max_len_a=1.5, max_len_b=10)
        self.generator = task.build_generator(self.models, gen)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        checkpoint_file: str = "checkpoint_best.pt",
        data: Optional[str] = None,
        region_features: Optional[str] = None,
        **kwargs,
    ):
        """``data``: the data-bin (default: the one the model was trained on);
        ``region_features``: the store images are looked up in by name."""
        path = os.path.join(model_dir, checkpoint_file)
        model, task, _ = load_checkpoint(path, {"data": data, "region_features": region_features},
                                         kinds=("NMT", "MMT"), purpose="VTLMTranslator")  # fmt: skip
        return cls([model], task, split_data_path(task.cfg.data, epoch=1), source=path, **kwargs)

    def encode(self, sentence: str) -> torch.Tensor:
        """Raw sentence -> ``</s> tokens </s>`` ids, as the task feeds the encoder."""
        (bpe,) = self.bpe([self.tokenize(sentence)])
        ids = self.dictionary.encode_line(bpe, add_if_not_exist=False, append_eos=True).long()
        return torch.cat([ids.new_tensor([self.dictionary.eos()]), ids])

    def decode(self, tokens: torch.Tensor) -> str:
        text = self.dictionary.string(tokens, bpe_symbol="@@ ")
        return self.detokenizer.detokenize(text.split())

    def _regions(self, images, single: bool, count: int) -> Dict[str, torch.Tensor]:
        """The images' regions, batched, for a multimodal model."""
        store = self.task.store
        if images is None:
            raise InputError(f"{self.source}: a multimodal model (MMT): give an image for each sentence")
        images = [images] if single or isinstance(images, (str, RegionFeatures)) else list(images)
        if len(images) != count:
            raise InputError(f"{self.source}: {len(images)} images for {count} sentences; give one per sentence")
        items = []
        for i, image in enumerate(images):
            if isinstance(image, RegionFeatures):
                where = f"image {i} (RegionFeatures) for {self.source}"
                check_regions(image, where, store.num_classes, store.feature_dim)
                if len(image) > store.num_regions:
                    raise InputError(f"{where}: {len(image)} regions, the model takes at most {store.num_regions}")
            else:
                image = store.read(image)  # names the store and the image it lacks
            items.append(region_item(image, store.num_regions))
        regions = collate_regions(items)
        return {"region_features": regions["features"], "region_boxes": regions["boxes"],
                "region_mask": regions["mask"]}  # fmt: skip

    @torch.no_grad()
    def translate(
        self, sentences: Union[str, Sequence[str]], images: Union[None, Image, Sequence[Image]] = None
    ) -> Union[str, List[str]]:
        """One sentence (and image) or a list; an image is a name in the
        feature store or a RegionFeatures object."""
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        if not sentences:
            return []
        tokens = [self.encode(s) for s in sentences]
        net_input = {
            "src_tokens": data_utils.collate_tokens(tokens, self.dictionary.pad()),
            "src_lengths": torch.LongTensor([len(t) for t in tokens]),
        }
        if getattr(self.task, "store", None) is not None:
            net_input.update(self._regions(images, single, len(sentences)))
        elif images is not None:
            raise InputError(f"{self.source}: this model was trained without images (NMT); give no images")
        sample = {"net_input": net_input, "id": torch.arange(len(tokens))}
        hypos = self.task.inference_step(self.generator, self.models, sample)
        out = [self.decode(h[0]["tokens"]) for h in hypos]
        return out[0] if single else out

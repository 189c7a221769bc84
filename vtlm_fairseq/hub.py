"""Python API as fairseq's hub interface (``GeneratorHubInterface``), for
this plugin's NMT/MMT: raw sentences in, each with its image, translations
or scores out.

    from vtlm_fairseq.hub import VTLMTranslator
    mt = VTLMTranslator.from_pretrained("checkpoints/mmt", data="data-bin/multi30k",
                                        region_features="features.h5")
    mt.translate("A man holds a bat.", images="1000092795.jpg")
    mt.score("A man holds a bat.", "Ein Mann hält einen Schläger.", images="1000092795.jpg")

The text goes through the data-bin's own preparation (Moses pipeline with the
same lowercasing/accent settings, its BPE codes); the output is detokenised.
Decoding is fairseq's SequenceGenerator, scoring its SequenceScorer (as
``fairseq-generate --score-reference``), batching fairseq's batch iterator.

``load_checkpoint`` loads any checkpoint of the plugin (TLM, VTLM, NMT, MMT)
safely, for this API and for the probes.
"""

import contextlib
import dataclasses
import json
import logging
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fairseq.data import FairseqDataset
from fairseq.dataclass.configs import GenerationConfig
from fairseq.hub_utils import GeneratorHubInterface
from omegaconf import open_dict
from sacremoses import MosesDetokenizer

from .checkpoints import load_trained_model, read_fairseq_checkpoint
from .text.bpe import BPEApplier
from .data.feature_store import FeatureStoreError, RegionFeatures, check_regions, store_exists
from .data.multimodal_pair_dataset import MultimodalPairDataset
from .data.region_dataset import collate_regions, region_tensors
from .data.splits import split_data_path
from .text.tokenization import MosesPipeline, remove_bpe
from .errors import InputError

logger = logging.getLogger(__name__)

Array = Union[np.ndarray, torch.Tensor]
# a name in the feature store, one image's regions, (features (R, D), boxes
# (R, 4)), or a mapping with "features" and "boxes" (and "classes", "scores")
Image = Union[str, RegionFeatures, Tuple[Array, Array], Mapping[str, Array]]

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
    """The model of ``load_checkpoint_and_config``."""
    return load_checkpoint_and_config(path, overrides, kinds, purpose)[0]


def load_checkpoint_and_config(path, overrides: Optional[Dict] = None, kinds: Sequence[str] = tuple(KINDS),
                               purpose: str = "this"):  # fmt: skip
    """(LoadedModel, the checkpoint's fairseq config): a checkpoint of one of ``kinds``, read safely (weights-only, an
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
    if kind in ("VTLM", "MMT") and store and "region_features" not in overrides and not store_exists(store):
        raise InputError(f"{store}: no such feature store (the one {path} was trained with; give the feature store)")
    models, cfg, task = load_trained_model(path, overrides, state=state)  # names the file in its errors
    return LoadedModel(models[0].eval(), task, kind), cfg


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




# the reference's decoding: beam 8, length penalty 1, 1.5 x source + 10 tokens
REFERENCE_DECODING = {"beam": 8, "lenpen": 1.0, "max_len_a": 1.5, "max_len_b": 10}
GENERATION_OPTIONS = frozenset(f.name for f in dataclasses.fields(GenerationConfig))
# generate's own arguments in fairseq (not generation options)
GENERATE_ARGUMENTS = frozenset({"beam", "verbose", "skip_invalid_size_inputs", "inference_step_args",
                                "prefix_allowed_tokens_fn"})  # fmt: skip
# batching options of from_pretrained -> cfg.dataset (fairseq's --max-sentences is --batch-size)
BATCH_OPTIONS = {"max_tokens": "max_tokens", "batch_size": "batch_size", "max_sentences": "batch_size"}
DEFAULT_BATCH_SIZE = 64  # where the checkpoint sets neither max_tokens nor batch_size


def check_generation_options(options: Mapping, where: str) -> None:
    """InputError naming an option that is not one of GenerationConfig's
    (fairseq would set it silently and ignore it)."""
    unknown = sorted(set(options) - GENERATION_OPTIONS)
    if unknown:
        raise InputError(f"{where}: unknown generation option(s) {', '.join(unknown)} "
                         "(fairseq's GenerationConfig fields: beam, lenpen, max_len_a, sampling, ...)")  # fmt: skip


def fairseq_data_path(model_dir: str, data_name_or_path: str) -> Optional[str]:
    """fairseq's ``data_name_or_path`` (``.``: the model's folder) as our
    ``data``: a folder with a dictionary, else None (the data-bin the model
    was trained on)."""
    path = os.path.join(model_dir, data_name_or_path) if data_name_or_path.startswith(".") else data_name_or_path
    has_dictionary = os.path.isdir(path) and any(n.startswith("dict.") for n in os.listdir(path))
    return path if has_dictionary or not data_name_or_path.startswith(".") else None


def _array(value, dtype, where: str, name: str) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {name} are not numbers ({e})") from None


def _is_one_image(image) -> bool:
    """One image rather than a list of them (a pair (features, boxes) of
    arrays is one image)."""
    if isinstance(image, (str, RegionFeatures, Mapping)):
        return True
    pair = isinstance(image, tuple) and len(image) == 2
    return pair and (torch.is_tensor(image[0]) or isinstance(image[0], np.ndarray))


class GivenRegions(FairseqDataset):
    """Item i: the regions of sentence i's image, a store row (read when its
    batch is made) or regions given as arrays; batched as the task's
    RegionFeatureDataset."""

    def __init__(self, store, images: List[Union[int, RegionFeatures]]):
        self.store = store
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        regions = image if isinstance(image, RegionFeatures) else self.store.read_row(int(image))
        return region_tensors(regions)

    def collater(self, samples):
        return collate_regions(samples)


class VTLMTranslator(GeneratorHubInterface):
    """fairseq's GeneratorHubInterface for NMT/MMT: ``translate``,
    ``sample``, ``generate`` and ``score`` take the sentences' images
    (``images=``: one per sentence, for an MMT), batching and ``.to(device)``
    are fairseq's. Generation options (``beam``, ``lenpen``, ``max_len_a``,
    ``max_len_b``, ``sampling``, ``sampling_topk``, ...) go, as keyword
    arguments, into fairseq's GenerationConfig, over ``cfg.generation``;
    batches follow ``cfg.dataset.max_tokens`` and ``cfg.dataset.batch_size``."""

    def __init__(self, cfg, task, models, source: str = "the model"):
        """``source`` names the model (its checkpoint) in error messages."""
        super().__init__(cfg, task, models)
        self.source = source
        data_dir = split_data_path(task.cfg.data, epoch=1)
        src, tgt = task.cfg.source_lang, task.cfg.target_lang
        settings = data_bin_settings(data_dir)
        self.source_pipeline = MosesPipeline(src, **settings)
        self.target_pipeline = MosesPipeline(tgt, **settings)
        codes = os.path.join(data_dir, "bpe.codes")
        if not os.path.isfile(codes):
            raise InputError(f"{codes}: no such file; the data-bin's BPE codes are needed to encode raw text")
        self.bpe_codes = BPEApplier(codes)
        self.detokenizer = MosesDetokenizer(lang=tgt)
        # fairseq's generate batches through _build_batches(tokens, skip):
        # the regions and targets of the call in progress reach it here
        self._call_inputs = (None, None)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        checkpoint_file: str = "checkpoint_best.pt",
        data: Optional[str] = None,
        region_features: Optional[str] = None,
        **kwargs,
    ):
        """``checkpoint_file``: one, or several separated by ``os.pathsep``
        (an ensemble, as fairseq); ``data``: the data-bin (default: the one
        the model was trained on); ``region_features``: the store images are
        looked up in by name. Other keyword arguments: generation defaults
        (GenerationConfig fields; the reference's beam 8, lenpen 1, max length
        1.5 x source + 10 unless given) and batching (``max_tokens``,
        ``batch_size`` alias ``max_sentences``)."""
        batching = {BATCH_OPTIONS[k]: kwargs.pop(k) for k in list(kwargs) if k in BATCH_OPTIONS}
        check_generation_options(kwargs, "VTLMTranslator.from_pretrained")
        paths = [os.path.join(model_dir, name) for name in checkpoint_file.split(os.pathsep)]
        loaded = [load_checkpoint_and_config(path, {"data": data, "region_features": region_features},
                                             kinds=("NMT", "MMT"), purpose="VTLMTranslator")
                  for path in paths]  # fmt: skip
        (first, cfg), kinds = loaded[0], {m.kind for m, _ in loaded}
        if len(kinds) > 1:
            raise InputError(f"{os.pathsep.join(paths)}: an ensemble of NMT and MMT models; give models of one kind")
        with open_dict(cfg):
            for name, value in {**REFERENCE_DECODING, **kwargs}.items():
                cfg.generation[name] = value
            for name, value in batching.items():
                cfg.dataset[name] = value
            if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
                cfg.dataset.batch_size = DEFAULT_BATCH_SIZE
        return cls(cfg, first.task, [m.model for m, _ in loaded], source=os.pathsep.join(paths))

    # -- text: the data-bin's preparation; fairseq's encode/decode compose these
    def tokenize(self, sentence: str) -> str:
        return self.source_pipeline(sentence)

    def apply_bpe(self, sentence: str) -> str:
        return self.bpe_codes([sentence])[0]

    def binarize(self, sentence: str) -> torch.LongTensor:
        """``</s> tokens </s>``, as the task feeds the encoder."""
        ids = self.src_dict.encode_line(sentence, add_if_not_exist=False).long()
        return torch.cat([ids.new_tensor([self.src_dict.eos()]), ids])

    def encode_target(self, sentence: str) -> torch.LongTensor:
        """A raw target-language sentence -> ``tokens </s>``, as the data-bin's targets."""
        bpe = self.apply_bpe(self.target_pipeline(sentence))
        return self.tgt_dict.encode_line(bpe, add_if_not_exist=False).long()

    def remove_bpe(self, sentence: str) -> str:
        return remove_bpe(sentence)

    def detokenize(self, sentence: str) -> str:
        return self.detokenizer.detokenize(sentence.split())

    # -- images
    def _image_list(self, images, count: int) -> List:
        if getattr(self.task, "store", None) is None:
            if images is not None:
                raise InputError(f"{self.source}: this model was trained without images (NMT); give no images")
            return []
        if images is None:
            raise InputError(f"{self.source}: a multimodal model (MMT): give an image for each sentence")
        images = [images] if _is_one_image(images) else list(images)
        if len(images) != count:
            raise InputError(f"{self.source}: {len(images)} images for {count} sentences; give one per sentence")
        return images

    def _given_image(self, image, index: int) -> RegionFeatures:
        """Regions given as arrays, checked."""
        store = self.task.store
        where = f"image {index} ({type(image).__name__}) for {self.source}"
        if isinstance(image, tuple) and _is_one_image(image):
            image = {"features": image[0], "boxes": image[1]}
        if isinstance(image, Mapping):
            if "features" not in image or "boxes" not in image:
                raise InputError(f"{where}: give 'features' (R, D) and 'boxes' (R, 4)")
            features = _array(image["features"], np.float32, where, "features")
            n = len(features) if features.ndim else 0
            # classes and scores feed no layer of a translation model
            image = RegionFeatures(
                features=features,
                boxes=_array(image["boxes"], np.float32, where, "boxes"),
                classes=_array(image.get("classes", np.zeros(n)), np.int64, where, "classes"),
                scores=_array(image.get("scores", np.ones(n)), np.float32, where, "scores"),
            )
        if not isinstance(image, RegionFeatures):
            raise InputError(f"{where}: an image is a name in {store.path}, a RegionFeatures, a pair "
                             "(features (R, D), boxes (R, 4)) of arrays or tensors, or a mapping of them")  # fmt: skip
        check_regions(image, where, store.num_classes, store.feature_dim)
        if len(image) > store.num_regions:
            raise InputError(f"{where}: {len(image)} regions, the model takes at most {store.num_regions}")
        return image

    def regions(self, images, count: int) -> Optional[GivenRegions]:
        """The dataset of ``count`` sentences' images (None for an NMT);
        InputError for a missing, unknown or malformed image."""
        images = self._image_list(images, count)
        store = getattr(self.task, "store", None)
        if store is None:
            return None
        names = [(i, image) for i, image in enumerate(images) if isinstance(image, str)]
        rows, absent = store.rows_for([name for _, name in names], missing="drop")  # one look-up for all
        if absent:
            (line, name), more = absent[0], f" ({len(absent) - 1} more images missing)" if len(absent) > 1 else ""
            raise FeatureStoreError(f"{store.path}: no image '{name}' (image {names[line - 1][0]}){more}")
        given = [self._given_image(image, i) if not isinstance(image, str) else None for i, image in enumerate(images)]
        for (i, _), row in zip(names, rows):
            given[i] = int(row)
        return GivenRegions(store, given)

    # -- fairseq's entry points, with images
    def translate(self, sentences, images=None, beam: Optional[int] = None, verbose: bool = False, **kwargs):
        """Best translation of each sentence (a string for a string); beam
        search with ``cfg.generation`` (beam 8 unless given)."""
        return self.sample(sentences, images, beam=beam or self.cfg.generation.beam, verbose=verbose, **kwargs)

    def sample(self, sentences, images=None, beam: int = 1, verbose: bool = False, **kwargs):
        """As fairseq's: beam 1 unless given; ``sampling=True``,
        ``sampling_topk``/``sampling_topp`` draw from the model instead."""
        if isinstance(sentences, str):
            return self.sample([sentences], None if images is None else [images], beam, verbose, **kwargs)[0]
        hypos = self.generate([self.encode(s) for s in sentences], images, beam, verbose, **kwargs)
        return [self.decode(h[0]["tokens"]) for h in hypos]

    def generate(self, tokenized_sentences, images=None, beam: Optional[int] = None, verbose: bool = False,
                 nbest: Optional[int] = None, **kwargs) -> List[List[Dict[str, torch.Tensor]]]:  # fmt: skip
        """fairseq's generate: per sentence (encoder input ``</s> ids </s>``,
        as ``encode`` gives it), the beam's hypotheses, best first, each a
        dict of ``tokens``, ``score`` (length-normalised log-probability,
        natural log; fairseq-generate prints it in base 2), ``positional_scores``,
        ``attention``, ``alignment``; the first ``nbest`` only where given."""
        if torch.is_tensor(tokenized_sentences) and tokenized_sentences.dim() == 1:
            one = None if images is None else [images]
            return self.generate([tokenized_sentences], one, beam, verbose, nbest, **kwargs)[0]
        hypos = self._run(tokenized_sentences, images, None, beam=beam or self.cfg.generation.beam,
                          verbose=verbose, **kwargs)  # fmt: skip
        return hypos if nbest is None else [h[:nbest] for h in hypos]

    def score(self, sentences, translations, images=None, **kwargs):
        """The model's log-probabilities of the given translations (raw text,
        one per sentence; one dict for a string): ``score`` (mean over the
        target tokens and the final </s>, natural log), ``positional_scores``,
        ``tokens``; as ``fairseq-generate --score-reference``."""
        if isinstance(sentences, str) != isinstance(translations, str):
            raise InputError("score: give a sentence and its translation, or a list of each")
        if isinstance(sentences, str):
            return self.score([sentences], [translations], None if images is None else [images], **kwargs)[0]
        sentences, translations = list(sentences), list(translations)
        if len(sentences) != len(translations):
            raise InputError(f"score: {len(sentences)} sentences and {len(translations)} translations")
        return self.score_tokens([self.encode(s) for s in sentences], [self.encode_target(t) for t in translations],
                                 images, **kwargs)  # fmt: skip

    def score_tokens(self, src_tokens: Sequence[torch.Tensor], tgt_tokens: Sequence[torch.Tensor], images=None,
                     **kwargs) -> List[Dict[str, torch.Tensor]]:  # fmt: skip
        """The scoring path for code (contrastive evaluation and the like):
        fairseq's SequenceScorer on (source, target, image) triples, batched
        by ``cfg.dataset``, in input order. ``src_tokens``: ``</s> ids </s>``
        (``encode``), ``tgt_tokens``: ``ids </s>`` (``encode_target``, or a
        data-bin's target); ``images`` as for ``generate``. One hypothesis
        dict per pair."""
        src_tokens, tgt_tokens = list(src_tokens), list(tgt_tokens)
        if len(src_tokens) != len(tgt_tokens):
            raise InputError(f"score: {len(src_tokens)} sources and {len(tgt_tokens)} targets")
        return [h[0] for h in self._run(src_tokens, images, tgt_tokens, beam=1, score_reference=True, **kwargs)]

    def _run(self, tokens, images, targets, **kwargs):
        """fairseq's generate on these sentences, images and targets."""
        check_generation_options({k: v for k, v in kwargs.items() if k not in GENERATE_ARGUMENTS}, "generate")
        tokens = [torch.as_tensor(t, dtype=torch.long) for t in tokens]
        if targets is not None:
            targets = [torch.as_tensor(t, dtype=torch.long) for t in targets]
        regions = self.regions(images, len(tokens))
        if not tokens:
            return []
        with self._inputs(regions, targets):
            return super().generate(tokens, **kwargs)

    @contextlib.contextmanager
    def _inputs(self, regions, targets):
        self._call_inputs = (regions, targets)
        try:
            yield
        finally:
            self._call_inputs = (None, None)

    def _build_batches(self, tokens, skip_invalid_size_inputs: bool):
        """fairseq's batching, over a dataset that carries the images and
        targets; batch ids restore the input order."""
        regions, targets = self._call_inputs
        lengths = np.array([t.numel() for t in tokens])
        target_lengths = None if targets is None else np.array([t.numel() for t in targets])
        if not skip_invalid_size_inputs:
            self._check_lengths(lengths, target_lengths)
        dataset = MultimodalPairDataset(
            tokens, lengths, self.src_dict, targets, target_lengths, self.tgt_dict,
            left_pad_source=self.task.cfg.left_pad_source, left_pad_target=self.task.cfg.left_pad_target,
            shuffle=False, regions=regions,
        )  # fmt: skip
        return self.task.get_batch_iterator(
            dataset=dataset,
            max_tokens=self.cfg.dataset.max_tokens,
            max_sentences=self.cfg.dataset.batch_size,
            max_positions=self.max_positions,
            ignore_invalid_inputs=skip_invalid_size_inputs,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)

    def _check_lengths(self, lengths, target_lengths) -> None:
        """InputError for a sentence longer than the model takes (fairseq
        raises a bare Exception)."""
        limits = self.max_positions if isinstance(self.max_positions, tuple) else (self.max_positions,) * 2
        for side, sizes, limit in (("sentence", lengths, limits[0]), ("translation", target_lengths, limits[1])):
            if sizes is not None and limit is not None and len(sizes) and sizes.max() > limit:
                i = int(sizes.argmax())
                raise InputError(f"{self.source}: {side} {i} has {int(sizes[i])} tokens, the model takes at most "
                                 f"{limit} (skip_invalid_size_inputs=True leaves such sentences out)")  # fmt: skip


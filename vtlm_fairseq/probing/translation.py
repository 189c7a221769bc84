"""Translation probes of fine-tuned NMT/MMT models (the paper's section on
entity masking and incongruent decoding): entity words of the test sources
are replaced by [MASK], by a [MASK] whose embedding is zeroed, or deleted;
the models translate, and we report BLEU and how often the masked entity's
German word still appears in the translation. Incongruent decoding gives the
MMT shuffled or reversed images."""

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.data import BaseWrapperDataset
from fairseq.dataclass.configs import GenerationConfig

from ..text.tokenization import MosesPipeline
from ..errors import InputError
from ..hub import data_bin_manifest
from ..scoring import score
from .inputs import check_annotations
from ..data.words import EntityWords, normalise, word_spans

logger = logging.getLogger(__name__)

MODES = ("mask", "zero", "delete")


class EntityMaskedSource(BaseWrapperDataset):
    """A translation dataset (items with ``source`` = ``</s> src </s>``)
    whose source entity words are replaced by one [MASK] each (modes mask
    and zero) or deleted. ``masked[i]`` lists the entity words of item i."""

    def __init__(self, dataset, dictionary, words: EntityWords, mode: str, mask_idx: int):
        super().__init__(dataset)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}: {mode}")
        self.dictionary, self.words, self.mode, self.mask_idx = dictionary, words, mode, mask_idx
        self.masked: List[List[str]] = [[] for _ in range(len(dataset))]
        self._sources = [self._edit(i) for i in range(len(dataset))]

    def _edit(self, index: int) -> torch.Tensor:
        source = self.dataset[index]["source"]
        tokens = source.tolist()
        body = tokens[1:]  # after the leading </s>
        out, last = [tokens[0]], 0
        for word, start, end in word_spans(self.dictionary, body):
            if word in self.words.german:
                out += body[last:start] + ([] if self.mode == "delete" else [self.mask_idx])
                self.masked[index].append(word)
                last = end
        out += body[last:]
        return source.new_tensor(out)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        item["source"] = self._sources[index]
        return item


@contextmanager
def zeroed_mask_embedding(model, mask_idx: int):
    """The encoder's [MASK] embedding row set to zero for the duration."""
    weight = model.encoder.embed_tokens.weight
    saved = weight.data[mask_idx].clone()
    weight.data[mask_idx] = 0.0
    try:
        yield
    finally:
        weight.data[mask_idx] = saved


def build_generator(model, task, beam: int = 8):
    """fairseq's beam search with the paper's decoding settings."""
    return task.build_generator([model], GenerationConfig(beam=beam, lenpen=1.0, max_len_a=1.5, max_len_b=10))


@torch.no_grad()
def translate_dataset(model, task, dataset, beam: int = 8, batch_size: int = 64) -> List[str]:
    """Hypotheses (BPE'd tokens, as fairseq-generate writes them before
    post-processing) in dataset order."""
    generator = build_generator(model, task, beam)
    itr = task.get_batch_iterator(
        dataset, max_sentences=batch_size, max_positions=(1024, 1024), seed=1
    ).next_epoch_itr(shuffle=False)
    out: Dict[int, str] = {}
    for sample in itr:
        hypos = task.inference_step(generator, [model], sample)
        for sample_id, hypo in zip(sample["id"].tolist(), hypos):
            out[sample_id] = task.target_dictionary.string(hypo[0]["tokens"].int())
    if len(out) != len(dataset):
        raise RuntimeError(f"{len(dataset) - len(out)} sentences were not translated")
    return [out[i] for i in range(len(dataset))]


def recovery(hypotheses: Sequence[str], references_tok: Sequence[str], masked: Sequence[List[str]],
             words: EntityWords) -> Tuple[int, int]:  # fmt: skip
    """(recovered, counted): a masked word counts where one of its German
    words is in the reference, and is recovered where the hypothesis has it."""
    recovered = counted = 0
    for hyp, ref, entities in zip(hypotheses, references_tok, masked):
        hyp_words = {normalise(w) for w in hyp.replace("@@ ", "").split()}
        ref_words = {normalise(w) for w in ref.split()}
        for entity in entities:
            german = words.german[entity] & ref_words
            if german:
                counted += 1
                recovered += bool(german & hyp_words)
    return recovered, counted


IMAGE_CONDITIONS = ("aligned", "shuffled", "reversed", "none")


@contextmanager
def image_condition(task, condition: str, seed: int = 1):
    """The task's datasets, while inside, pair sentences with their images
    (aligned), with other images (shuffled: seeded; reversed), or with none
    (an MMT then translates from the text alone)."""
    if condition not in IMAGE_CONDITIONS:
        raise ValueError(f"image condition must be one of {IMAGE_CONDITIONS}: {condition}")
    saved = task.store, task.cfg.image_order, task.cfg.image_order_seed
    if condition == "none":
        task.store = None
    else:
        task.cfg.image_order, task.cfg.image_order_seed = condition, seed
    try:
        yield
    finally:
        task.store, task.cfg.image_order, task.cfg.image_order_seed = saved


def entity_masking_probe(model, task, split: str, words: EntityWords, references: Sequence[str],
                         modes: Sequence[str] = ("none",) + MODES, beam: int = 8,
                         annotations=None, images: Sequence[str] = ("aligned",), seed: int = 1) -> List[dict]:  # fmt: skip
    """BLEU (and ambiguous-word accuracy with annotations) of the plain
    sources and of each masked version, and the recovery rate of the masked
    entity words; for an MMT under each image condition of ``images``
    (aligned, shuffled, none: what the image adds beyond the text prior)."""
    tokenizer = MosesPipeline(task.cfg.target_lang, lowercase=True, strip_accents=True)
    refs_tok = [tokenizer(r) for r in references]
    unknown = set(modes) - {"none", *MODES}
    if unknown:
        raise ValueError(f"masking modes must be none or one of {MODES}: {sorted(unknown)}")
    if task.store is None:
        images = ("none",)  # a text-only model: the one condition there is
    rows = []
    for condition in images:
        with image_condition(task, condition, seed):
            task.load_dataset(split)
            rows += [dict(r, images=condition) for r in _entity_masking_rows(
                model, task, split, words, references, refs_tok, modes, beam, annotations)]
    task.load_dataset(split)  # the task's own condition again
    return rows


def _entity_masking_rows(model, task, split, words, references, refs_tok, modes, beam, annotations) -> List[dict]:
    base = task.dataset(split)
    if annotations is not None:
        check_annotations(annotations, len(base), task, split)
    masked = EntityMaskedSource(base, task.source_dictionary, words, "mask", task.mask_idx)
    rows = []
    for mode in modes:
        # "zero" translates the [MASK] sources with the [MASK] embedding zeroed
        dataset = masked if mode in ("mask", "zero") else base
        if mode == "delete":
            dataset = EntityMaskedSource(base, task.source_dictionary, words, mode, task.mask_idx)
        with zeroed_mask_embedding(model, task.mask_idx) if mode == "zero" else nullcontext():
            hyps = translate_dataset(model, task, dataset, beam)
        scores = score(hyps, references, task.cfg.target_lang, annotations=annotations)
        recovered, counted = recovery(hyps, refs_tok, masked.masked, words)
        rows.append({
            "probe": "entity_masking", "mode": mode, "bleu_detok": scores["bleu_detok"],
            "bleu_tok_lc": scores["bleu_tok_lc"], "entity_recall": round(100.0 * recovered / max(counted, 1), 2),
            "entities": counted, **({"ambiguous_acc": scores["ambiguous_word_accuracy"]} if annotations else {}),
        })  # fmt: skip
    return rows


def incongruent_decoding(model, task, split: str, references: Sequence[str], orders=("aligned", "shuffled", "reversed"),
                         seed: int = 1, beam: int = 8, annotations=None) -> List[dict]:  # fmt: skip
    """BLEU (and ambiguous-word accuracy) with the correct, shuffled and
    reversed image order."""
    rows = []
    for order in orders:
        with image_condition(task, order, seed):
            task.load_dataset(split)
        if annotations is not None:
            check_annotations(annotations, len(task.dataset(split)), task, split)
        hyps = translate_dataset(model, task, task.dataset(split), beam)
        scores = score(hyps, references, task.cfg.target_lang, annotations=annotations)
        row = {"probe": "incongruent", "images": order, "bleu_detok": scores["bleu_detok"],
               "bleu_tok_lc": scores["bleu_tok_lc"]}  # fmt: skip
        if annotations is not None:
            row["ambiguous_acc"] = scores["ambiguous_word_accuracy"]
        rows.append(row)
    task.load_dataset(split)  # the task's own image order again
    return rows


def raw_references(task, split: str, path: Optional[str] = None) -> List[str]:
    """The split's raw target text: ``path``, else the file vtlm-prepare
    recorded for it in the data-bin's prepare.json."""
    from ..text.corpus import read_lines
    from ..data.splits import split_data_path

    data = split_data_path(task.cfg.data, 1)
    if path is None:
        manifest = data_bin_manifest(data)
        where = Path(data) / "prepare.json"
        if manifest is None:
            raise InputError(f"{where}: no such file (vtlm-prepare writes it); give the raw references")
        try:
            path = manifest["splits"][split]["text"][task.cfg.target_lang]
        except (KeyError, TypeError):
            has = ", ".join(manifest["splits"])
            raise InputError(f"{where}: no {task.cfg.target_lang} text of split '{split}' (has splits {has}); "
                             "give the raw references") from None  # fmt: skip
    references = read_lines(path)
    task.load_dataset(split)
    if len(references) != len(task.dataset(split)):
        raise InputError(f"{path}: {len(references)} references for the {len(task.dataset(split))} sentences "
                         f"of split '{split}' in {data}")  # fmt: skip
    return references

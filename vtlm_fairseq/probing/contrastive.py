"""Contrastive evaluation of NMT/MMT models (CoMMuTE, Futeral et al. 2023):
an ambiguous source sentence, its image, a correct and an incorrect
translation (the other meaning); the model is right where the correct one
gets the lower perplexity. Targets are scored with fairseq's SequenceScorer
on batches of the translation task's own dataset; the image-blind control
gives every example another example's image."""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq import utils
from fairseq.sequence_scorer import SequenceScorer

from ..text.bpe import BPEApplier
from ..text.corpus import CorpusError, check_parallel, read_lines, read_order_file
from ..data.multimodal_pair_dataset import MultimodalPairDataset
from ..data.region_dataset import RegionFeatureDataset
from ..text.tokenization import MosesPipeline
from ..errors import InputError
from ..hub import data_bin_settings

logger = logging.getLogger(__name__)

IMAGE_ORDER = "img.order"


@dataclass
class ContrastiveSet:
    """A folder in CoMMuTE's layout: ``src.SRC``, ``correct.TGT``,
    ``incorrect.TGT`` and ``img.order``, line i of each = example i."""

    folder: Path
    src: str
    tgt: str
    sources: List[str]
    correct: List[str]
    incorrect: List[str]
    images: Optional[List[str]]  # None where the folder has no img.order

    def path(self, kind: str) -> Path:
        """kind: src, correct, incorrect or img."""
        name = {"src": f"src.{self.src}", "correct": f"correct.{self.tgt}", "incorrect": f"incorrect.{self.tgt}"}
        return self.folder / name.get(kind, IMAGE_ORDER)

    def __len__(self):
        return len(self.sources)


def _language(folder: Path, stem: str) -> str:
    found = sorted(p.name[len(stem) + 1 :] for p in folder.glob(f"{stem}.*") if p.is_file())
    if len(found) != 1:
        what = f"{len(found)} files ({', '.join(f'{stem}.{x}' for x in found)})" if found else "no file"
        raise InputError(f"{folder}: {what} {stem}.LANG; a contrastive set (CoMMuTE's layout) has one "
                         f"(src.en, correct.de, incorrect.de, {IMAGE_ORDER})")  # fmt: skip
    return found[0]


def read_contrastive_set(folder) -> ContrastiveSet:
    """The set's files, each line checked (UTF-8, not empty, an image name
    without spaces), and the same number of lines in each."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'} (the contrastive set)")
    src, tgt = _language(folder, "src"), _language(folder, "correct")
    out = ContrastiveSet(folder, src, tgt, [], [], [], None)
    out.sources, out.correct, out.incorrect = (read_lines(out.path(k)) for k in ("src", "correct", "incorrect"))
    files = {str(out.path("src")): out.sources, str(out.path("correct")): out.correct,
             str(out.path("incorrect")): out.incorrect}  # fmt: skip
    if out.path("img").is_file():
        out.images = read_order_file(out.path("img"))
        files[str(out.path("img"))] = out.images
    check_parallel(files)
    if not out.sources:
        raise CorpusError(f"{out.path('src')}: no examples")
    return out


def derangement(names: Sequence[str], seed: int, where: str = IMAGE_ORDER) -> np.ndarray:
    """``perm`` such that example i gets image ``names[perm[i]]``, never its
    own image (by name: a shuffle that hands back the same image, as a plain
    permutation does where examples share images, is no control). Examples
    are put in a seeded random order grouped by image, then each takes the
    image of the example as many places on as the largest group is long."""
    names = list(names)
    n = len(names)
    rng = np.random.default_rng(seed)
    groups: Dict[str, List[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    largest = max((len(g) for g in groups.values()), default=0)
    if 2 * largest > n:
        image = max(groups, key=lambda k: len(groups[k]))
        raise InputError(f"{where}: {largest} of the {n} examples show '{image}': no shuffle gives every "
                         "example another image")  # fmt: skip
    keys = list(groups)
    order = np.array([i for k in rng.permutation(len(keys)) for i in rng.permutation(groups[keys[k]])], dtype=np.int64)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = order[(np.arange(n) + largest) % n]
    return perm


class ContrastiveScorer:
    """Scores target sentences of an NMT/MMT model given their sources (and
    images): summed log-probability and token count (with the final </s>)
    of each, in batches of ``batch_size`` examples."""

    def __init__(self, model, task, data_dir: str, batch_size: int = 64):
        self.model, self.task, self.batch_size = model, task, batch_size
        # raw text as vtlm-prepare made the data-bin (its Moses settings, its
        # BPE codes), as the hub (VTLMTranslator) prepares it
        settings = data_bin_settings(data_dir)
        languages = (task.cfg.source_lang, task.cfg.target_lang)
        self.pipelines = {lang: MosesPipeline(lang, **settings) for lang in languages}
        codes = Path(data_dir) / "bpe.codes"
        if not codes.is_file():
            raise InputError(f"{codes}: no such file; the data-bin's BPE codes are needed to encode raw text")
        self.bpe = BPEApplier(codes)
        self.scorer = SequenceScorer(task.target_dictionary)
        self.max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())

    def encode(self, sentences: Sequence[str], path, target: bool) -> List[torch.Tensor]:
        """Token ids of each line of ``path``: ``</s> ids </s>`` for sources,
        as the task feeds the encoder, ``ids </s>`` for targets, as the
        data-bin's; InputError naming the line of one longer than the model takes."""
        lang = self.task.cfg.target_lang if target else self.task.cfg.source_lang
        dictionary = self.task.target_dictionary if target else self.task.source_dictionary
        lead = [] if target else [dictionary.eos()]
        tokens = [torch.LongTensor(lead + dictionary.encode_line(line, add_if_not_exist=False).tolist())
                  for line in self.bpe([self.pipelines[lang](s) for s in sentences])]  # fmt: skip
        limit = self.max_positions[1 if target else 0]
        for lineno, t in enumerate(tokens, start=1):
            if limit is not None and len(t) > limit:
                raise InputError(f"{path}:{lineno}: {len(t)} tokens, more than the {limit} the model takes")
        return tokens

    @torch.no_grad()
    def score(self, sources: List[torch.Tensor], targets: List[torch.Tensor],
              regions: Optional[RegionFeatureDataset] = None) -> List[Tuple[float, int]]:  # fmt: skip
        """(sum of the target's token log-probabilities, its tokens) per example."""
        dictionary = self.task.target_dictionary
        dataset = MultimodalPairDataset(
            sources, [len(t) for t in sources], self.task.source_dictionary,
            targets, [len(t) for t in targets], dictionary,
            left_pad_source=self.task.cfg.left_pad_source, left_pad_target=self.task.cfg.left_pad_target,
            regions=regions, corpus_order=True,
        )  # fmt: skip
        itr = self.task.get_batch_iterator(
            dataset, max_sentences=self.batch_size, max_positions=self.max_positions, seed=1
        ).next_epoch_itr(shuffle=False)
        out: Dict[int, Tuple[float, int]] = {}
        for sample in itr:
            hypos = self.task.inference_step(self.scorer, [self.model], sample)
            for index, hypo in zip(sample["id"].tolist(), hypos):
                scores = hypo[0]["positional_scores"]
                out[index] = (float(scores.double().sum()), int(scores.numel()))
        if len(out) != len(dataset):
            raise RuntimeError(f"{len(dataset) - len(out)} examples were not scored")
        return [out[i] for i in range(len(dataset))]


def _side(logprob: float, tokens: int) -> Dict[str, float]:
    mean = logprob / tokens
    return {"logprob": logprob, "tokens": tokens, "mean_logprob": mean, "ppl": math.exp(-mean)}


def compare(correct: Sequence[Tuple[float, int]], incorrect: Sequence[Tuple[float, int]],
            images: Optional[Sequence[str]]) -> Tuple[Dict, List[Dict]]:  # fmt: skip
    """(summary, per-example rows). An example is right when the correct
    translation has the lower perplexity per token (``accuracy``), or the
    higher summed log-probability (``accuracy_sum``); a tie counts as wrong,
    and the ties are counted."""
    examples = []
    for i, (c, w) in enumerate(zip(correct, incorrect)):
        c, w = _side(*c), _side(*w)
        examples.append({
            "line": i + 1, **({"image": images[i]} if images is not None else {}),
            **{f"correct_{k}": v for k, v in c.items()}, **{f"incorrect_{k}": v for k, v in w.items()},
            "right": c["mean_logprob"] > w["mean_logprob"], "right_sum": c["logprob"] > w["logprob"],
        })  # fmt: skip
    n = len(examples)
    right = sum(e["right"] for e in examples)
    right_sum = sum(e["right_sum"] for e in examples)
    summary = {
        "examples": n, "right": right, "accuracy": right / n,
        "ties": sum(e["correct_mean_logprob"] == e["incorrect_mean_logprob"] for e in examples),
        "right_sum": right_sum, "accuracy_sum": right_sum / n,
        "ties_sum": sum(e["correct_logprob"] == e["incorrect_logprob"] for e in examples),
    }  # fmt: skip
    return summary, examples


def check_images(cset: ContrastiveSet, store) -> None:
    """Every image of img.order in the store; the first absent one named
    with its line."""
    if cset.images is None:
        raise InputError(f"{cset.path('img')}: no such file; a multimodal model (MMT) needs an image per example")
    absent = [(i, name) for i, name in enumerate(cset.images, start=1) if name not in store]
    if absent:
        (line, name), more = absent[0], len(absent) - 1
        raise InputError(f"{cset.path('img')}:{line}: image '{name}' is not in {store.path}"
                         + (f" ({more} more images missing)" if more else ""))  # fmt: skip


def contrastive_evaluation(model, task, kind: str, cset: ContrastiveSet, data_dir: str, source: str,
                           seeds: Sequence[int] = (1,), batch_size: int = 64) -> List[Dict]:  # fmt: skip
    """Rows: with the set's images ("aligned") and, per seed, with a seeded
    derangement of them ("shuffled"), for an MMT; without images ("none")
    for a text-only model. Each row carries ``per_example``."""
    if (cset.src, cset.tgt) != (task.cfg.source_lang, task.cfg.target_lang):
        raise InputError(f"{cset.folder}: a {cset.src}-{cset.tgt} set; {source} translates "
                         f"{task.cfg.source_lang}-{task.cfg.target_lang}")  # fmt: skip
    store = getattr(task, "store", None)
    if store is not None:
        check_images(cset, store)
    scorer = ContrastiveScorer(model, task, data_dir, batch_size)
    sources = scorer.encode(cset.sources, cset.path("src"), target=False)
    correct = scorer.encode(cset.correct, cset.path("correct"), target=True)
    incorrect = scorer.encode(cset.incorrect, cset.path("incorrect"), target=True)
    unk = task.target_dictionary.unk()
    base = {"probe": "contrastive", "set": str(cset.folder), "model": kind,
            "unk_tokens": int(sum((t == unk).sum() for t in correct + incorrect))}  # fmt: skip
    if store is None:
        logger.info("%s is text-only: scored without images (the shuffled-image control does not apply)", source)
        conditions = [("none", None, None)]
    else:
        conditions = [("aligned", None, list(cset.images))]
        for seed in seeds:
            perm = derangement(cset.images, seed, str(cset.path("img")))
            conditions.append(("shuffled", seed, [cset.images[p] for p in perm]))
    rows = []
    for images, seed, names in conditions:
        regions = None
        if names is not None:
            where = f"{cset.path('img')}" + (f" (shuffled, seed {seed})" if seed is not None else "")
            regions = RegionFeatureDataset(store, names, source=where)
        summary, examples = compare(scorer.score(sources, correct, regions), scorer.score(sources, incorrect, regions),
                                    names)  # fmt: skip
        row = {**base, "images": images, **({"seed": seed} if seed is not None else {}), **summary}
        logger.info("contrastive %s, images %s%s: accuracy %.3f (per token), %.3f (summed log-prob), %d examples",
                    cset.folder, images, f" (seed {seed})" if seed is not None else "", row["accuracy"],
                    row["accuracy_sum"], row["examples"])  # fmt: skip
        rows.append({**row, "per_example": examples})
    return rows

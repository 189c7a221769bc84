"""Training throughput of the plugin against fairseq's built-ins, and the cost
of the image (issue areas 1-3), each as interleaved rounds in one process:

- overhead: ``multimodal_translation`` without images vs fairseq's
  ``translation`` task, same model (vtlm_translation_tiny), data and seed;
  target words/s (fairseq's wps: target tokens) >= 0.95x. Our source is
  ``</s> src </s>`` (the reference's), one token longer than fairseq's
  task makes it; a second baseline, fairseq's task on a data-bin whose
  source is ``</s> src``, sees the same tokens as ours.
- tlm: ``translation_lm`` (vtlm_tiny) vs fairseq's ``masked_lm`` with a
  RoBERTa encoder of the same shape on the same tokens (``<s> en </s> </s>
  de </s>``: as many tokens per pair as our ``</s> en </s> </s> de </s>``);
  target tokens/s >= 0.95x.
- image: VTLM vs TLM (text tokens/s, i.e. inverse step time, next to the
  padded sequence length the regions add), and VTLM with its features
  served from memory vs from the HDF5 store; target store/memory >= 0.95x.

Data loading runs in the training process (``--num-workers 0``; fairseq
prefetches batches in a thread of it), so the CPU-time ratios include the
feature reads of every step whether or not that thread hides them.

    python benchmarks/throughput.py --json work_dirs/bench/throughput.json
"""

import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

from benchmarks.benchlib import (  # noqa: E402
    Report,
    Row,
    TrainingLoop,
    base_parser,
    interleaved,
    quiet_logging,
    set_threads,
    timed_row,
    toy_data,
)

TRAIN_COMMON = ["--optimizer", "adam", "--lr", "1e-4", "--clip-norm", "5", "--batch-size", "64", "--cpu",
                "--num-workers", "0", "--seed", "1", "--disable-validation", "--no-save"]  # fmt: skip
TRANSLATION = ["--source-lang", "en", "--target-lang", "de", "--arch", "vtlm_translation_tiny",
               "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]  # fmt: skip
# fairseq's roberta at vtlm_tiny's shape
TINY_ENCODER = ["--encoder-layers", "2", "--encoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512",
                "--encoder-attention-heads", "4"]  # fmt: skip
AREAS = ("overhead", "tlm", "image")


class InMemoryStore:
    """A FeatureStore's arrays held in memory, with the same ``read_row``:
    the baseline that tells whether reading the HDF5 store slows training."""

    def __init__(self, store):
        import h5py

        count = len(store)
        with h5py.File(store.path, "r") as f:
            self.arrays = {key: f[key][:count] for key in ("features", "boxes", "classes", "scores", "num_regions")}
        self.path, self.num_regions, self.feature_dim = store.path, store.num_regions, store.feature_dim

    def read_row(self, row: int):
        from vtlm_fairseq.data.feature_store import RegionFeatures

        n = int(self.arrays["num_regions"][row])
        a = self.arrays
        return RegionFeatures(a["features"][row, :n], a["boxes"][row, :n], a["classes"][row, :n], a["scores"][row, :n])


def allow_numpy2_in_token_blocks() -> None:
    """fairseq's TokenBlockDataset (masked_lm's data path) still names
    ``np.compat.long``, which numpy 2 removed; give it back for the baseline."""
    import types

    import numpy as np

    if "compat" not in vars(np):
        np.compat = types.SimpleNamespace(long=np.int64)


def rebinarised(data_bin: Path, out: Path, dict_name: str, files: Dict[str, Callable]) -> Path:
    """A data-bin in ``out`` with ``data_bin``'s dictionary (as ``dict_name``)
    and, for each ``name: make(en, de, eos)``, the indexed file ``name``
    holding ``make``'s token tensor for every training pair."""
    if (out / "complete").exists():
        return out
    import torch
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_bin / "dict.en.txt", out / dict_name)
    dictionary = Dictionary.load(str(out / dict_name))
    en = data_utils.load_indexed_dataset(str(data_bin / "train.en-de.en"), dictionary)
    de = data_utils.load_indexed_dataset(str(data_bin / "train.en-de.de"), dictionary)
    eos = torch.tensor([dictionary.eos()], dtype=en[0].dtype)
    for name, make in files.items():
        builder = indexed_dataset.make_builder(str(out / f"{name}.bin"), impl="mmap", vocab_size=len(dictionary))
        for i in range(len(en)):
            builder.add_item(make(en[i], de[i], eos))
        builder.finalize(str(out / f"{name}.idx"))
    (out / "complete").touch()
    return out


def monolingual_pairs(data_bin: Path, out: Path) -> Path:
    """fairseq masked_lm's data-bin with the same tokens as our TLM pairs: each
    line is ``en </s> </s> de </s>`` (masked_lm puts ``<s>`` in front)."""
    import torch

    return rebinarised(data_bin, out, "dict.txt", {"train": lambda en, de, eos: torch.cat([en, eos, de])})


def eos_prefixed_source(data_bin: Path, out: Path) -> Path:
    """fairseq translation's data-bin with our encoder's tokens: the source is
    ``</s> en </s>``, as multimodal_translation makes it, the target as is."""
    import torch

    path = rebinarised(data_bin, out, "dict.en.txt", {
        "train.en-de.en": lambda en, de, eos: torch.cat([eos, en]),
        "train.en-de.de": lambda en, de, eos: de,
    })  # fmt: skip
    shutil.copy(data_bin / "dict.de.txt", out / "dict.de.txt")
    return path


class PaddedLength:
    """Mean padded positions per example of the batches a loop trains on
    (text plus regions): what the step's compute scales with."""

    def __init__(self):
        self.positions = self.examples = 0

    def __call__(self, sample: dict) -> None:
        net_input = sample["net_input"]
        tokens = net_input["src_tokens"]
        regions = net_input.get("region_mask")
        self.positions += tokens.numel() + (regions.numel() if regions is not None else 0)
        self.examples += tokens.shape[0]

    @property
    def mean(self) -> float:
        return self.positions / max(self.examples, 1)


OURS, FAIRSEQ, FAIRSEQ_SAME_TOKENS = "multimodal_translation", "fairseq translation", "fairseq translation, </s> src"


def overhead_rows(data, args) -> List[Row]:
    # our source is "</s> src </s>" as the reference's, one token more than
    # fairseq's translation task makes of the same data-bin; the third
    # variant gives fairseq that source too, which leaves the code's overhead
    data_bins = {OURS: data.data_bin, FAIRSEQ: data.data_bin,
                 FAIRSEQ_SAME_TOKENS: eos_prefixed_source(data.data_bin, args.work / "eos-source-bin")}  # fmt: skip
    lengths = {name: PaddedLength() for name in data_bins}
    loops = {
        name: TrainingLoop([path, "--task", "multimodal_translation" if name == OURS else "translation",
                            *TRANSLATION, *TRAIN_COMMON], observe=lengths[name])
        for name, path in data_bins.items()
    }  # fmt: skip
    samples = interleaved({k: loop.block(args.steps) for k, loop in loops.items()}, args.repeats, args.warmup)
    return [
        timed_row("1 plugin overhead (train, no images)", "words/s", samples, OURS, baseline, ">= 0.95",
                  note=f"padded source positions/sentence {lengths[OURS].mean:.1f} vs {lengths[baseline].mean:.1f}")
        for baseline in (FAIRSEQ, FAIRSEQ_SAME_TOKENS)
    ]  # fmt: skip


def tlm_rows(data, args) -> List[Row]:
    mono = monolingual_pairs(data.data_bin, args.work / "masked_lm-bin")
    allow_numpy2_in_token_blocks()
    loops = {
        "fairseq masked_lm (roberta)": TrainingLoop([
            mono, "--task", "masked_lm", "--sample-break-mode", "eos", "--tokens-per-sample", "512",
            "--arch", "roberta", *TINY_ENCODER, "--max-positions", "512", "--criterion", "masked_lm", *TRAIN_COMMON,
        ]),  # fmt: skip
        "translation_lm": TrainingLoop([data.data_bin, "--task", "translation_lm", "--arch", "vtlm_tiny",
                                        "--criterion", "vtlm_loss", *TRAIN_COMMON]),  # fmt: skip
    }
    samples = interleaved({k: loop.block(args.steps) for k, loop in loops.items()}, args.repeats, args.warmup)
    return [timed_row("2 TLM vs masked_lm", "tokens/s", samples, "translation_lm", "fairseq masked_lm (roberta)",
                      ">= 0.95")]  # fmt: skip


def image_rows(data, args) -> List[Row]:
    lengths: Dict[str, PaddedLength] = {name: PaddedLength() for name in ("tlm", "vtlm")}
    vtlm_argv = [data.data_bin, "--task", "visual_tlm", "--region-features", data.store, "--arch", "vtlm_tiny",
                 "--criterion", "vtlm_loss", *TRAIN_COMMON]  # fmt: skip
    loops = {
        "tlm": TrainingLoop([data.data_bin, "--task", "translation_lm", "--arch", "vtlm_tiny",
                             "--criterion", "vtlm_loss", *TRAIN_COMMON], observe=lengths["tlm"]),  # fmt: skip
        "vtlm (HDF5 store)": TrainingLoop(vtlm_argv, observe=lengths["vtlm"]),
        "vtlm (features in memory)": TrainingLoop(vtlm_argv),
    }
    regions = loops["vtlm (features in memory)"].dataset.regions
    regions.store = InMemoryStore(regions.store)
    samples = interleaved({k: loop.block(args.steps) for k, loop in loops.items()}, args.repeats, args.warmup)
    length_ratio = lengths["vtlm"].mean / lengths["tlm"].mean
    return [
        timed_row("3 cost of the image", "text tokens/s", samples, "vtlm (HDF5 store)", "tlm",
                  note=f"padded positions/example {lengths['vtlm'].mean:.1f} vs {lengths['tlm'].mean:.1f} "
                       f"({length_ratio:.2f}x)"),
        timed_row("3 feature loading", "text tokens/s", samples, "vtlm (HDF5 store)", "vtlm (features in memory)",
                  ">= 0.95"),
    ]  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=11)
    parser.add_argument("--steps", type=int, default=5, help="updates per timed block")
    parser.add_argument("--areas", nargs="+", choices=AREAS, default=list(AREAS))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quiet_logging()
    data = toy_data(args.work / "toy")
    report = Report("training throughput", args)
    for area, rows in (("overhead", overhead_rows), ("tlm", tlm_rows), ("image", image_rows)):
        if area in args.areas:
            for row in rows(data, args):
                report.add(row)
    report.finish()


if __name__ == "__main__":
    main()

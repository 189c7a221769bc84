"""Beam-search generation speed (issue areas 1 and 5): fairseq's
SequenceGenerator, beam 8, over the toy world's test split, in one process
with interleaved rounds:

- plugin overhead: ``multimodal_translation`` without images vs fairseq's
  ``translation`` task, same model (vtlm_translation_tiny), both batching
  by length (ours: ``--sort-eval-by-length``); target sentences/s >= 0.95x.
- corpus order: our default batching of evaluation splits in corpus order
  (outputs in corpus order; more padding per batch) vs by length.
- MMT vs NMT: the decoder cross-attends over 36 region states more.
- encoding the regions once per sentence (fairseq's way: the encoder runs
  once per sentence and its states are reordered across the beams) against
  counterfactuals on the same MMT model (CounterfactualEnsemble): the
  encoder run on the beam-expanded inputs (once per hypothesis), or again
  at every decoding step; and the cross-attention keys and values of the
  regions and words computed per beam rather than per sentence. Their
  hypotheses must equal the MMT ones (checked).

The models are untrained, so every hypothesis is forced to the test split's
median target length (min_len = max_len): every variant does the same
decoding steps. Batches are collated before timing: decoding is measured,
not data loading (training throughput covers that).

    python benchmarks/generation.py --json work_dirs/bench/generation.json
"""

import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

import torch  # noqa: E402
from fairseq.sequence_generator import EnsembleModel  # noqa: E402

from benchmarks.benchlib import (  # noqa: E402
    Report,
    base_parser,
    fairseq_setup,
    interleaved,
    quiet_logging,
    set_threads,
    timed_row,
    toy_data,
)

MODEL = ["--arch", "vtlm_translation_tiny", "--source-lang", "en", "--target-lang", "de", "--cpu", "--seed", "1"]


COUNTERFACTUALS = ("encoder once per hypothesis", "encoder every step", "cross-attention per beam")


class CounterfactualEnsemble(EnsembleModel):
    """Decoding as it would run without one of our savings, on the same
    model; the hypotheses stay the same (checked):

    - "encoder once per hypothesis": where fairseq expands the encoder states
      to the beams, the encoder runs on the expanded inputs instead;
    - "encoder every step": and again wherever fairseq reorders them;
    - "cross-attention per beam": the encoder states lose their ``beam_size``
      mark, so each beam's cross-attention keys and values are computed and
      reordered on their own (the translation model before it grouped them).

    The encoder reruns keep the ``beam_size`` mark, so that they measure the
    encoder alone."""

    def __init__(self, models, mode: str):
        super().__init__(models)
        if mode not in COUNTERFACTUALS:
            raise ValueError(f"mode must be one of {COUNTERFACTUALS}: {mode}")
        self.mode = mode
        self._net_input: Dict[str, torch.Tensor] = {}
        self._beam = 0

    def forward_encoder(self, net_input):
        self._net_input, self._beam = net_input, 0
        return super().forward_encoder(net_input)

    def reorder_encoder_out(self, encoder_outs, new_order):
        if self.mode == "cross-attention per beam":
            return [dict(out, beam_size=[]) for out in super().reorder_encoder_out(encoder_outs, new_order)]
        if self._beam and self.mode == "encoder once per hypothesis":
            return super().reorder_encoder_out(encoder_outs, new_order)
        if not self._beam:
            self._beam = new_order.numel() // self._net_input["src_tokens"].shape[0]
        self._net_input = {k: v.index_select(0, new_order) if torch.is_tensor(v) else v
                           for k, v in self._net_input.items()}  # fmt: skip
        mark = [torch.tensor(self._beam)]
        return [dict(out, beam_size=mark) for out in super().forward_encoder(self._net_input)]


class Decoder:
    """A task, one untrained model and the test split's batches, collated
    once; ``block`` decodes all of them and returns the sentence count."""

    def __init__(self, argv: List, batch_size: int, beam: int, counterfactual: Optional[str] = None, model=None,
                 task=None, forced_length: bool = True):  # fmt: skip
        """``forced_length`` False: hypotheses end where the model puts </s>
        (max 1.5 x source + 10), so sentences of a batch finish at different
        steps (tests use it)."""
        from fairseq.dataclass.configs import GenerationConfig

        if task is None:
            cfg, task = fairseq_setup(argv)
            torch.manual_seed(cfg.common.seed)
            model = task.build_model(cfg.model)
            model.eval()
            task.load_dataset("test")
        self.task, self.model = task, model
        dataset = task.dataset("test")
        itr = task.get_batch_iterator(dataset=dataset, max_sentences=batch_size, num_workers=0)
        self.batches = list(itr.next_epoch_itr(shuffle=False))
        if forced_length:
            length = int(statistics.median(dataset.tgt_sizes))  # target tokens, </s> included
            gen_cfg = GenerationConfig(beam=beam, max_len_a=0, max_len_b=length - 1, min_len=length - 1)
        else:
            gen_cfg = GenerationConfig(beam=beam, max_len_a=1.5, max_len_b=10)
        models = [model] if counterfactual is None else CounterfactualEnsemble([model], counterfactual)
        self.generator = task.build_generator(models, gen_cfg)
        self.hypotheses: List[List[int]] = []

    def block(self) -> float:
        self.hypotheses = []
        for sample in self.batches:
            for hypos in self.task.inference_step(self.generator, [self.model], sample):
                self.hypotheses.append(hypos[0]["tokens"].tolist())
        return float(sum(len(b["id"]) for b in self.batches))

    @property
    def encoder_positions(self) -> float:
        """Mean encoder positions per sentence (text, plus regions for MMT)."""
        total = 0
        for b in self.batches:
            net_input = b["net_input"]
            total += net_input["src_tokens"].numel() + net_input.get("region_mask", torch.empty(0)).numel()
        return total / sum(len(b["id"]) for b in self.batches)


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=9)
    parser.add_argument("--batch-size", type=int, default=50, help="sentences per batch")
    parser.add_argument("--beam", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=100, help="test sentences decoded per timed block")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quiet_logging()
    data = toy_data(args.work / "toy")
    report = Report("generation", args)
    ours = [data.data_bin, "--task", "multimodal_translation", *MODEL]
    decoders = {
        "fairseq translation (NMT)": Decoder([data.data_bin, "--task", "translation", *MODEL],
                                             args.batch_size, args.beam),  # fmt: skip
        "multimodal_translation (NMT, by length)": Decoder(ours + ["--sort-eval-by-length"], args.batch_size, args.beam),
        "multimodal_translation (NMT)": Decoder(ours, args.batch_size, args.beam),
        "multimodal_translation (MMT)": Decoder(ours + ["--region-features", data.store], args.batch_size, args.beam),
    }
    mmt = decoders["multimodal_translation (MMT)"]
    for mode in COUNTERFACTUALS:
        decoders[f"MMT, {mode}"] = Decoder([], args.batch_size, args.beam, mode, mmt.model, mmt.task)
    for decoder in decoders.values():
        decoder.batches = trim(decoder.batches, args.sentences)
    samples = interleaved({k: d.block for k, d in decoders.items()}, args.repeats, args.warmup)
    by_length = decoders["multimodal_translation (NMT, by length)"]
    nmt = decoders["multimodal_translation (NMT)"]
    report.add(timed_row("1 plugin overhead (generate)", f"sentences/s, beam {args.beam}", samples,
                         "multimodal_translation (NMT, by length)", "fairseq translation (NMT)", ">= 0.95",
                         note=positions_note(by_length, decoders["fairseq translation (NMT)"])))
    report.add(timed_row("5 corpus order", f"sentences/s, beam {args.beam}", samples, "multimodal_translation (NMT)",
                         "multimodal_translation (NMT, by length)", note=positions_note(nmt, by_length)))  # fmt: skip
    report.add(timed_row("5 MMT vs NMT", f"sentences/s, beam {args.beam}", samples, "multimodal_translation (MMT)",
                         "multimodal_translation (NMT)",
                         note=positions_note(mmt, nmt)))  # fmt: skip
    for mode in COUNTERFACTUALS:
        name = f"MMT, {mode}"
        same = decoders[name].hypotheses == mmt.hypotheses
        benchmark = "5 cross-attention per sentence" if mode.startswith("cross") else "5 encoder once per sentence"
        report.add(timed_row(benchmark, f"sentences/s, beam {args.beam}", samples, "multimodal_translation (MMT)",
                             name, note=f"same hypotheses: {'yes' if same else 'NO'}"))  # fmt: skip
    report.finish()


def positions_note(variant: Decoder, baseline: Decoder) -> str:
    return f"padded encoder positions/sentence {variant.encoder_positions:.1f} vs {baseline.encoder_positions:.1f}"


def trim(batches: List[dict], sentences: int) -> List[dict]:
    """The first batches holding ``sentences`` sentences (whole batches)."""
    kept, count = [], 0
    for batch in batches:
        if count >= sentences:
            break
        kept.append(batch)
        count += len(batch["id"])
    return kept


if __name__ == "__main__":
    main()

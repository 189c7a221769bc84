"""Masked-LM cross-entropy plus weighted masked-region classification.

As in the reference, each term is a mean over its own predictions (masked
tokens, masked regions) and the loss is their weighted sum; a batch without
masked regions contributes no MRC term (the reference gives NaN there).
Each part is logged on its own: mlm_loss/mlm_ppl/mlm_acc, mrc_loss/mrc_acc,
and the counts behind them.
"""

import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


@dataclass
class VTLMLossConfig(FairseqDataclass):
    mrc_weight: float = field(default=1.0, metadata={"help": "weight of the masked region classification loss"})


@register_criterion("vtlm_loss", dataclass=VTLMLossConfig)
class VTLMLoss(FairseqCriterion):
    def __init__(self, task, mrc_weight: float = 1.0):
        super().__init__(task)
        self.mrc_weight = mrc_weight

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        masked_tokens = sample["target"].ne(self.padding_idx)
        region_target = sample.get("region_target")
        masked_regions = region_target.ge(0) if region_target is not None else None
        lm_logits, region_logits, _ = model(
            **net_input, masked_tokens=masked_tokens, masked_regions=masked_regions
        )
        targets = sample["target"][masked_tokens]
        n_tokens = int(targets.numel())
        mlm_sum = F.cross_entropy(lm_logits.float(), targets, reduction="sum")
        loss = mlm_sum / max(n_tokens, 1)
        logging_output = {
            "nsentences": sample["nsentences"],
            "ntokens": sample["ntokens"],  # all text tokens, for fairseq's wps/wpb
            "nmasked": n_tokens,
            "mlm_loss": mlm_sum.detach(),
            "mlm_correct": (lm_logits.argmax(-1) == targets).sum().item(),
            "sample_size": 1,
        }
        n_regions = int(masked_regions.sum()) if masked_regions is not None else 0
        if region_logits is not None:
            region_targets = region_target[masked_regions]
            mrc_sum = F.cross_entropy(region_logits.float(), region_targets, reduction="sum")
            if n_regions:
                loss = loss + self.mrc_weight * mrc_sum / n_regions
            logging_output["mrc_loss"] = mrc_sum.detach()
            logging_output["mrc_correct"] = (region_logits.argmax(-1) == region_targets).sum().item()
        logging_output["nregions"] = n_regions
        logging_output["loss"] = loss.detach()
        # sample_size 1: fairseq averages the per-batch means over GPUs and
        # accumulated batches, which is the reference's per-batch mean.
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        batches = total("sample_size")
        ntokens, nregions = total("nmasked"), total("nregions")
        metrics.log_scalar("loss", total("loss") / max(batches, 1) / math.log(2), batches, round=3)
        if ntokens:
            metrics.log_scalar("mlm_loss", total("mlm_loss") / ntokens / math.log(2), ntokens, round=3)
            metrics.log_derived("mlm_ppl", lambda m: 2 ** m["mlm_loss"].avg)
            metrics.log_scalar("mlm_acc", 100.0 * total("mlm_correct") / ntokens, ntokens, round=2)
        if nregions:
            metrics.log_scalar("mrc_loss", total("mrc_loss") / nregions / math.log(2), nregions, round=3)
            metrics.log_scalar("mrc_acc", 100.0 * total("mrc_correct") / nregions, nregions, round=2)
        # masked tokens and regions per batch, the counts behind the means
        metrics.log_scalar("mlm_count", ntokens / max(batches, 1), batches, round=1)
        metrics.log_scalar("mrc_count", nregions / max(batches, 1), batches, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

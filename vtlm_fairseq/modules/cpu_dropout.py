"""Dropout for training on CPU with masks drawn by numpy's SFC64.

Why: on CPU torch draws a dropout mask with a Mersenne Twister, one 32-bit
draw an element, then multiplies by a bool mask, a slow mixed-dtype op:
about 12 ns an element here, a fifth of a vtlm_tiny step. Here a mask is 16-bit
slices of SFC64's raw 64-bit outputs (four elements a draw), compared with
a threshold and applied as one float multiply: about 1.5 ns an element.

What changes: masks come from another generator, so a seeded run's losses
differ from a run with torch's dropout (``--cpu-dropout torch``, which
reproduces runs of earlier releases). Each mask's SFC64 seed is drawn from
torch's default generator, which fairseq reseeds at every update, so a run
is still reproducible and a resumed run continues it. An element is dropped
with probability ``round(p * 65536) / 65536`` (0.100006 for 0.1) and the kept
ones are scaled by the inverse of the exact keep rate, so expectations are
unchanged. GPU tensors always use torch's dropout.
"""

import math

import numpy as np
import torch
import torch.nn as nn
from fairseq.modules import FairseqDropout

LEVELS = 1 << 16  # a 16-bit slice per element


def draw_keep_mask(shape, p: float):
    """A bool mask of ``shape`` (True = kept) and the scale of kept values."""
    threshold = round(p * LEVELS)
    n = math.prod(shape)
    seed = int(torch.randint(0, torch.iinfo(torch.int64).max, (), dtype=torch.int64))
    draws = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.uint16)[:n]
    keep = torch.from_numpy(draws >= threshold).view(shape)
    return keep, LEVELS / (LEVELS - threshold)


def scaled_mask(keep: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    # through uint8: a bool -> float conversion is ten times slower on CPU
    return keep.view(torch.uint8).to(dtype).mul_(scale)


class _MaskAndScale(torch.autograd.Function):
    """x * keep * scale; keeps the 1-byte mask for backward (not a float one)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * scaled_mask(keep, scale, x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * scaled_mask(keep, ctx.scale, grad.dtype), None, None


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    if round(p * LEVELS) >= LEVELS:
        return x * 0.0
    if round(p * LEVELS) == 0:
        return x
    keep, scale = draw_keep_mask(x.shape, p)
    return _MaskAndScale.apply(x, keep, scale)


class CpuDropout(FairseqDropout):
    """fairseq's dropout module, with SFC64 masks when training on CPU
    (``fast``, set for a whole model by :func:`set_cpu_dropout`)."""

    fast = True

    def forward(self, x, inplace: bool = False):
        # training only: dropout kept at inference (--retain-dropout) stays torch's
        if self.fast and self.training and self.p > 0 and x.device.type == "cpu":
            return cpu_dropout(x, self.p)
        return super().forward(x, inplace=inplace)


def use_cpu_dropout(module: nn.Module) -> nn.Module:
    """Replaces every FairseqDropout inside ``module`` with a CpuDropout of the
    same settings (they hold no parameters: state dicts are unchanged)."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, FairseqDropout) and not isinstance(child, CpuDropout):
                replacement = CpuDropout(child.p, module_name=child.module_name)
                replacement.apply_during_inference = child.apply_during_inference
                setattr(parent, name, replacement)
    return module


def set_cpu_dropout(module: nn.Module, fast: bool) -> None:
    """``--cpu-dropout``: fast (SFC64 masks) or torch (torch's own dropout;
    attention then takes fairseq's own path too, exactly as before)."""
    for m in module.modules():
        if isinstance(m, CpuDropout):
            m.fast = fast

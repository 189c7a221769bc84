"""fairseq's MultiheadAttention, computed eagerly when training on CPU with
:class:`~vtlm_fairseq.modules.cpu_dropout.CpuDropout` on its weights.

Why: with attention dropout, fairseq hands self-attention to torch's
``F.multi_head_attention_forward``, whose CPU path draws the dropout with
torch's slow mask and rebuilds the padding mask for every layer (a "safe"
softmax: ``isneginf``, ``all``, ``where`` over the weights); cross-attention
takes fairseq's own eager path, which fills a 5-D copy of the weights for
padding. Here: the padding (and causal) mask is a bias added inside the
scores' ``baddbmm``, then softmax, the SFC64 dropout, ``bmm``. Same
parameters, same state dict; inference, GPUs, incremental decoding and
``--cpu-dropout torch`` go through fairseq's forward unchanged.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.modules import multihead_attention

from .cpu_dropout import CpuDropout, use_cpu_dropout


class MultiheadAttention(multihead_attention.MultiheadAttention):
    """Built only by :func:`eager_on_cpu` from the attention a fairseq layer built."""

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        incremental_state=None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask=None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ):
        if self._eager(query, key, incremental_state, need_weights, attn_mask, before_softmax, need_head_weights):
            return self._eager_forward(query, key, value, key_padding_mask, need_weights, attn_mask)
        return super().forward(
            query, key, value, key_padding_mask, incremental_state, need_weights,
            static_kv, attn_mask, before_softmax, need_head_weights,
        )  # fmt: skip

    def _eager(self, query, key, incremental_state, need_weights, attn_mask, before_softmax,
               need_head_weights) -> bool:  # fmt: skip
        """Only where fairseq's result is reproduced: plain training
        attention, masks as our layers pass them (2-D float or bool)."""
        dropout = self.dropout_module
        return (
            isinstance(dropout, CpuDropout)
            and dropout.fast
            and dropout.p > 0
            and self.training
            and query.device.type == "cpu"
            and incremental_state is None
            and key is not None
            and key.size(1) == query.size(1)
            and not before_softmax
            and not need_head_weights
            # fairseq returns self-attention weights after dropout, cross-attention's before
            and not (need_weights and not self.encoder_decoder_attention)
            and (attn_mask is None or (attn_mask.dim() == 2 and (attn_mask.is_floating_point()
                                                                 or attn_mask.dtype == torch.bool)))
            and self.bias_k is None
            and not self.add_zero_attn
            and not self.use_xformers
            and not self.onnx_trace
            and not self.skip_embed_dim_check
        )  # fmt: skip

    def _eager_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask):
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.size(0)
        rows = bsz * self.num_heads
        q = self.q_proj(query).view(tgt_len, rows, self.head_dim).transpose(0, 1)
        k = self.k_proj(key).view(src_len, rows, self.head_dim).transpose(0, 1)
        # fairseq's cross-attention projects the values from the keys too
        value = key if self.encoder_decoder_attention else value
        v = self.v_proj(value).view(src_len, rows, self.head_dim).transpose(0, 1)
        bias = self._mask_bias(key_padding_mask, attn_mask, bsz, src_len, q.dtype)
        if bias is None:
            scores = torch.bmm(q, k.transpose(1, 2)).mul_(self.scaling)
        else:
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scaling)
        weights = F.softmax(scores, dim=-1, dtype=torch.float32)
        probs = self.dropout_module(weights.type_as(scores))
        out = torch.bmm(probs, v).transpose(0, 1).reshape(tgt_len, bsz, embed_dim)
        out = self.out_proj(out)
        if not need_weights:
            return out, None
        # fairseq's convention: weights before dropout, averaged over heads
        return out, weights.view(bsz, self.num_heads, tgt_len, src_len).mean(dim=1)

    def _mask_bias(self, key_padding_mask, attn_mask, bsz, src_len, dtype) -> Optional[torch.Tensor]:
        """A large negative where a key is padding (one row per batch x head,
        broadcast over queries) plus the additive ``attn_mask`` (a bool one:
        -inf where True). Finite, not -inf: a query whose keys are all padding
        (left-padded targets) gets finite weights (uniform; torch's safe
        softmax gives zeros) instead of NaNs that would reach every gradient."""
        bias = None
        if key_padding_mask is not None:
            bias = torch.zeros(bsz, self.num_heads, 1, src_len, dtype=dtype, device=key_padding_mask.device)
            bias.masked_fill_(key_padding_mask.view(bsz, 1, 1, src_len).to(torch.bool), torch.finfo(dtype).min / 2)
            bias = bias.view(bsz * self.num_heads, 1, src_len)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=dtype).masked_fill_(attn_mask, float("-inf"))
            attn_mask = attn_mask.to(dtype).unsqueeze(0)
            bias = attn_mask if bias is None else bias + attn_mask
        return bias


def eager_on_cpu(attention: multihead_attention.MultiheadAttention) -> MultiheadAttention:
    """The attention a fairseq layer built, as ours: same object and
    parameters (ours adds no state, only the forward), CPU dropout inside."""
    attention.__class__ = MultiheadAttention
    use_cpu_dropout(attention)
    return attention

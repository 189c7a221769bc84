"""Our layers against fairseq's: same parameters, the eager CPU-training
attention computes fairseq's attention, and --cpu-dropout torch is fairseq's
layer exactly."""

import pytest
import torch
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from vtlm_fairseq.models.vtlm import VTLMConfig, layer_config
from vtlm_fairseq.modules.cpu_dropout import set_cpu_dropout
from vtlm_fairseq.modules.multihead_attention import MultiheadAttention
from vtlm_fairseq.modules.transformer_layer import TransformerDecoderLayer, TransformerEncoderLayer

T, S, B, DIM, HEADS = 7, 9, 5, 32, 4


def layer_pair(ours, theirs, dropout=0.1):
    cfg = layer_config(VTLMConfig(encoder_embed_dim=DIM, encoder_ffn_embed_dim=64, encoder_attention_heads=HEADS,
                                  dropout=dropout, attention_dropout=dropout, activation_dropout=dropout))  # fmt: skip
    torch.manual_seed(0)
    a = ours(cfg)
    torch.manual_seed(0)
    b = theirs(cfg)
    return a, b


def padding(batch, length):
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i in range(batch):
        mask[i, length - i % 3 :] = True  # some rows padded, never a whole one
    return mask


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, DIM, generator=g, requires_grad=True)
    enc = torch.randn(S, B, DIM, generator=g, requires_grad=True)
    return x, enc


@pytest.mark.parametrize("ours, theirs", [(TransformerEncoderLayer, TransformerEncoderLayerBase),
                                          (TransformerDecoderLayer, TransformerDecoderLayerBase)])  # fmt: skip
def test_same_parameters_as_fairseq(ours, theirs):
    a, b = layer_pair(ours, theirs)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    attentions = [a.self_attn] + ([a.encoder_attn] if hasattr(a, "encoder_attn") else [])
    assert all(type(m) is MultiheadAttention for m in attentions)


def run(layer, kind, x, enc, grads=True):
    if kind == "encoder":
        out = layer(x, encoder_padding_mask=padding(B, T))
        attn = None
    else:
        future = torch.triu(torch.full((T, T), float("-inf")), 1)
        out, attn, _ = layer(x, enc, padding(B, S), self_attn_mask=future, self_attn_padding_mask=padding(B, T),
                             need_attn=True)  # fmt: skip
    if grads:
        out.pow(2).sum().backward()
    return out, attn


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_eager_attention_computes_fairseqs(kind, monkeypatch):
    """Training on CPU (dropout too small to drop: the eager path, no mask)
    against fairseq's layer in eval mode: outputs, attention and gradients."""
    pair = (TransformerEncoderLayer, TransformerEncoderLayerBase) if kind == "encoder" else \
        (TransformerDecoderLayer, TransformerDecoderLayerBase)  # fmt: skip
    ours, theirs = layer_pair(*pair, dropout=1e-9)
    eager_calls = []
    original = MultiheadAttention._eager_forward
    monkeypatch.setattr(MultiheadAttention, "_eager_forward",
                        lambda self, *a: eager_calls.append(1) or original(self, *a))  # fmt: skip
    ours.train()
    theirs.eval()
    x1, e1 = inputs()
    x2, e2 = inputs()
    out1, attn1 = run(ours, kind, x1, e1)
    out2, attn2 = run(theirs, kind, x2, e2)
    assert len(eager_calls) == (1 if kind == "encoder" else 2)
    assert torch.allclose(out1, out2, atol=1e-5)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-4)
    if kind == "decoder":
        assert torch.allclose(attn1, attn2, atol=1e-6)
        assert torch.allclose(e1.grad, e2.grad, atol=1e-4)
    for (name, p1), p2 in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-4), name


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_torch_dropout_setting_is_fairseqs_layer_exactly(kind):
    pair = (TransformerEncoderLayer, TransformerEncoderLayerBase) if kind == "encoder" else \
        (TransformerDecoderLayer, TransformerDecoderLayerBase)  # fmt: skip
    ours, theirs = layer_pair(*pair)
    set_cpu_dropout(ours, False)
    outs = []
    for layer in (ours, theirs):
        layer.train()
        torch.manual_seed(5)
        outs.append(run(layer, kind, *inputs(), grads=False)[0])
    assert torch.equal(*outs)


def test_eager_training_drops_attention_weights():
    ours, _ = layer_pair(TransformerEncoderLayer, TransformerEncoderLayerBase, dropout=0.5)
    ours.train()
    torch.manual_seed(2)
    a = run(ours, "encoder", *inputs(), grads=False)[0]
    torch.manual_seed(2)
    b = run(ours, "encoder", *inputs(), grads=False)[0]
    torch.manual_seed(3)
    c = run(ours, "encoder", *inputs(), grads=False)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_a_query_with_every_key_padded_stays_finite():
    """Left-padded targets give queries whose keys are all padding: finite
    outputs and gradients (fairseq's own eager path gives NaN there), and
    the other rows as fairseq computes them."""
    ours, theirs = layer_pair(TransformerEncoderLayer, TransformerEncoderLayerBase, dropout=1e-9)
    ours.train()
    theirs.eval()
    mask = padding(B, T)
    mask[1] = True  # a sentence of padding only
    x1, x2 = inputs()[0], inputs()[0]
    out1, out2 = ours(x1, encoder_padding_mask=mask), theirs(x2, encoder_padding_mask=mask)
    out1.pow(2).sum().backward()
    assert torch.isfinite(out1).all() and torch.isfinite(x1.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    others = [i for i in range(B) if i != 1]
    assert torch.allclose(out1[:, others], out2[:, others], atol=1e-5)


@pytest.mark.parametrize("mask", [torch.zeros(T, T, dtype=torch.uint8), torch.zeros(B * HEADS, T, T)])
def test_masks_our_layers_never_pass_go_to_fairseqs_path(mask, monkeypatch):
    ours, _ = layer_pair(TransformerEncoderLayer, TransformerEncoderLayerBase)
    ours.train()
    monkeypatch.setattr(MultiheadAttention, "_eager_forward", lambda *a: pytest.fail("eager path taken"))
    attention = ours.self_attn
    x = inputs()[0]
    try:
        attention(x, x, x, attn_mask=mask, need_weights=False)
    except (RuntimeError, AssertionError):
        pass  # fairseq's (torch's) own verdict on the mask, whatever it is

"""The (V)TLM encoder: fairseq Transformer encoder layers (post-LN, GELU)
over ``[regions][text]``, with a tied masked-LM head and a masked-region
classification (MRC) head over the detector's classes."""

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.transformer import TransformerConfig
from fairseq.utils import safe_getattr

from ..languages import IMG_LANG
from ..modules.cpu_dropout import set_cpu_dropout
from ..modules.embeddings import RegionEmbedding, TextEmbedding
from ..modules.transformer_layer import TransformerEncoderLayer

logger = logging.getLogger(__name__)


@dataclass
class VTLMConfig(FairseqDataclass):
    encoder_layers: int = field(default=6, metadata={"help": "Transformer layers"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "model dimension"})
    encoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "FFN dimension"})
    encoder_attention_heads: int = field(default=8, metadata={"help": "attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout"})
    attention_dropout: float = field(default=0.1, metadata={"help": "attention weight dropout"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    max_positions: int = field(default=512, metadata={"help": "rows of the position table (per sentence)"})
    layer_norm_eps: float = field(default=1e-12, metadata={"help": "LayerNorm epsilon (XLM: 1e-12)"})
    region_dropout: float = field(default=0.1, metadata={"help": "dropout on region embeddings"})
    region_layer_norm: bool = field(default=False, metadata={"help": "LayerNorm on region embeddings"})
    no_region_box_bias: bool = field(
        default=False, metadata={"help": "no bias in the box projection (the reference's --reg_enc_bias false)"}
    )
    num_region_classes: int = field(default=601, metadata={"help": "detector classes (MRC targets)"})
    cpu_dropout: ChoiceEnum(["fast", "torch"]) = field(
        default="fast",
        metadata={"help": "dropout masks when training on CPU: fast (numpy SFC64 draws, seeded from torch's "
                  "generator: reproducible, several times cheaper) or torch (torch's own dropout, as releases "
                  "before 2026-12-08: reproduces their seeded runs); GPUs always use torch's"},
    )


class VTLMEncoder(FairseqEncoder):
    """``feature_dim`` None builds no region layers (TLM, NMT); ``with_heads``
    False builds no LM/MRC heads (the encoder of a translation model)."""

    def __init__(
        self,
        cfg: VTLMConfig,
        dictionary,
        num_langs: int,
        img_lang: int,
        mask_idx: int,
        feature_dim: Optional[int],
        with_heads: bool = True,
    ):
        super().__init__(dictionary)
        dim = cfg.encoder_embed_dim
        self.padding_idx = dictionary.pad()
        self.mask_idx = mask_idx
        self.max_positions_ = cfg.max_positions
        self.text_embedding = TextEmbedding.build(
            len(dictionary), num_langs, dim, self.padding_idx, cfg.max_positions, cfg.dropout, cfg.layer_norm_eps
        )
        self.embed_tokens = self.text_embedding.embed_tokens
        self.embed_langs = self.text_embedding.embed_langs
        # TLM (no feature store) builds no region layers: no dead parameters
        self.region_embedding = None
        self.region_classifier = None
        if feature_dim is not None:
            self.region_embedding = RegionEmbedding(
                feature_dim, dim, self.embed_langs, img_lang, cfg.region_dropout,
                layer_norm=cfg.region_layer_norm, box_bias=not cfg.no_region_box_bias,
                layer_norm_eps=cfg.layer_norm_eps,
            )  # fmt: skip
            if with_heads:
                self.region_classifier = nn.Linear(dim, cfg.num_region_classes)
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(layer_config(cfg)) for _ in range(cfg.encoder_layers)]
        )
        set_layer_norm_eps(self.layers, cfg.layer_norm_eps)
        self.lm_bias = nn.Parameter(torch.zeros(len(dictionary))) if with_heads else None
        set_cpu_dropout(self, cfg.cpu_dropout == "fast")

    def forward(
        self,
        src_tokens,
        src_langs,
        src_positions,
        region_features=None,
        region_boxes=None,
        region_mask=None,
        region_masked_input=None,
        **unused,
    ):
        """Returns the final states (B, R + T, C) and the padding mask (B, R + T),
        regions first; with no regions R = 0."""
        x = self.text_embedding(src_tokens, src_langs, src_positions)
        padding = src_tokens.eq(self.padding_idx)
        if region_features is not None:
            if self.region_embedding is None:
                raise ValueError("this model was built without region layers (TLM): it takes no regions")
            regions = self.region_embedding(
                region_features, region_boxes, region_masked_input, self.embed_tokens.weight[self.mask_idx]
            )
            x = torch.cat([regions, x], dim=1)
            padding = torch.cat([~region_mask, padding], dim=1)
        x = x.transpose(0, 1)
        has_padding = padding.any()
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=padding if has_padding else None)
        return {"states": x.transpose(0, 1), "padding_mask": padding}

    def lm_logits(self, states):
        """Tied output projection: embedding matrix plus a bias."""
        return F.linear(states, self.embed_tokens.weight, self.lm_bias)

    def max_positions(self):
        return self.max_positions_


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """fairseq's layers use LayerNorm eps 1e-5; XLM (the reference) 1e-12."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


def layer_config(cfg: VTLMConfig) -> TransformerConfig:
    """fairseq's Transformer layer settings for our (equal) encoder and
    decoder layer shapes."""
    tc = TransformerConfig()
    for side in (tc.encoder, tc.decoder):
        side.embed_dim = cfg.encoder_embed_dim
        side.ffn_embed_dim = cfg.encoder_ffn_embed_dim
        side.attention_heads = cfg.encoder_attention_heads
        side.normalize_before = False  # post-LN, as the paper
    tc.dropout = cfg.dropout
    tc.attention_dropout = cfg.attention_dropout
    tc.activation_dropout = cfg.activation_dropout
    tc.activation_fn = "gelu"
    return tc


@register_model("vtlm", dataclass=VTLMConfig)
class VTLMModel(FairseqEncoderModel):
    """TLM when called without regions, VTLM with them."""

    def __init__(self, cfg: VTLMConfig, encoder: VTLMEncoder):
        super().__init__(encoder)
        self.cfg = cfg

    @classmethod
    def build_model(cls, cfg: VTLMConfig, task):
        encoder = VTLMEncoder(
            cfg,
            task.dictionary,
            num_langs=len(task.lang_ids),
            img_lang=task.lang_ids[IMG_LANG],
            mask_idx=task.mask_idx,
            feature_dim=task.region_feature_dim,
        )
        return cls(cfg, encoder)

    def forward(self, src_tokens, src_langs, src_positions, masked_tokens=None, masked_regions=None, **kwargs):
        """Masked-LM logits at ``masked_tokens`` (B, T) and region-class logits
        at ``masked_regions`` (B, R), each flattened in (batch, position) order."""
        out = self.encoder(src_tokens, src_langs, src_positions, **kwargs)
        states = out["states"]
        n_regions = states.shape[1] - src_tokens.shape[1]
        text = states[:, n_regions:]
        lm_logits = self.encoder.lm_logits(text[masked_tokens] if masked_tokens is not None else text)
        region_logits = None
        if n_regions and masked_regions is not None:
            region_logits = self.encoder.region_classifier(states[:, :n_regions][masked_regions])
        return lm_logits, region_logits, out

    def max_positions(self):
        return self.encoder.max_positions()


@register_model_architecture("vtlm", "vtlm_base")
def vtlm_base(args):
    """The paper's encoder: 6 layers, 512 dims, 8 heads, FFN 2048."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 6)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 512)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 2048)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 8)
    # checkpoints saved before --cpu-dropout existed name an architecture, and
    # fairseq fills only what the architecture function sets
    args.cpu_dropout = safe_getattr(args, "cpu_dropout", "fast")


@register_model_architecture("vtlm", "vtlm_tiny")
def vtlm_tiny(args):
    """Trains in minutes on 2 CPU cores (the toy world)."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 2)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 128)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 512)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 4)
    vtlm_base(args)

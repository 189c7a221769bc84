"""Input embeddings of the (V)TLM encoder and of the translation models.

Text: token + learned absolute position (given explicitly: positions restart
for the second sentence of a pair) + language, then LayerNorm and dropout; no
sqrt(d) scaling (XLM). Regions: ReLU(feature projection) + ReLU(box
projection) + the ``img`` language embedding, optional LayerNorm, dropout.
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import LayerNorm, LearnedPositionalEmbedding

from .cpu_dropout import CpuDropout


def init_embedding(embedding: nn.Embedding, dim: int, padding_idx: Optional[int] = None):
    nn.init.normal_(embedding.weight, mean=0.0, std=dim**-0.5)
    if padding_idx is not None:
        nn.init.constant_(embedding.weight[padding_idx], 0.0)


class TextEmbedding(nn.Module):
    def __init__(
        self,
        embed_tokens: nn.Embedding,
        embed_langs: nn.Embedding,
        max_positions: int,
        dropout: float,
        layer_norm_eps: float,
    ):
        super().__init__()
        dim = embed_tokens.embedding_dim
        self.embed_tokens = embed_tokens
        self.embed_langs = embed_langs
        # positions are passed in, so no padding row (fairseq requires None then)
        self.embed_positions = LearnedPositionalEmbedding(max_positions, dim, padding_idx=None)
        init_embedding(self.embed_positions, dim)
        self.layer_norm = LayerNorm(dim, eps=layer_norm_eps)
        self.dropout_module = CpuDropout(dropout, module_name=self.__class__.__name__)

    @classmethod
    def build(cls, vocab_size, num_langs, dim, padding_idx, max_positions, dropout, layer_norm_eps):
        """With fresh token and language embeddings (normal, std dim^-0.5)."""
        embed_tokens = nn.Embedding(vocab_size, dim, padding_idx)
        init_embedding(embed_tokens, dim, padding_idx)
        embed_langs = nn.Embedding(num_langs, dim)
        init_embedding(embed_langs, dim)
        return cls(embed_tokens, embed_langs, max_positions, dropout, layer_norm_eps)

    def forward(self, tokens, langs, positions):
        x = self.embed_tokens(tokens) + self.embed_positions(tokens, positions=positions)
        x = x + self.embed_langs(langs)
        return self.dropout_module(self.layer_norm(x))


class RegionEmbedding(nn.Module):
    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        embed_langs: nn.Embedding,
        img_lang: int,
        dropout: float,
        layer_norm: bool = False,
        box_bias: bool = True,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, embed_dim)
        self.box_proj = nn.Linear(4, embed_dim, bias=box_bias)
        self.embed_langs = embed_langs
        self.img_lang = img_lang
        self.layer_norm = LayerNorm(embed_dim, eps=layer_norm_eps) if layer_norm else None
        self.dropout_module = CpuDropout(dropout, module_name=self.__class__.__name__)

    def forward(self, features, boxes, masked_input=None, mask_embedding=None):
        """features (B, R, D) (float16 from the store: converted here, once
        per batch), boxes (B, R, 4); where ``masked_input`` is True the
        feature term is replaced by ``mask_embedding`` (the [MASK] token)."""
        x = F.relu(self.feature_proj(features.to(self.feature_proj.weight.dtype)))
        if masked_input is not None and mask_embedding is not None:
            x = torch.where(masked_input.unsqueeze(-1), mask_embedding.to(x), x)
        x = x + F.relu(self.box_proj(boxes)) + self.embed_langs.weight[self.img_lang]
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.dropout_module(x)

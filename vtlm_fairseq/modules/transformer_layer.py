"""fairseq's Transformer encoder and decoder layers with our attention and
CPU dropout (see cpu_dropout.py): fairseq builds every part, in its order,
so a seeded initialisation and the state dict are fairseq's."""

from fairseq.modules import transformer_layer

from .cpu_dropout import use_cpu_dropout
from .multihead_attention import eager_on_cpu


class TransformerEncoderLayer(transformer_layer.TransformerEncoderLayerBase):
    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        use_cpu_dropout(self)

    def build_self_attention(self, embed_dim, cfg):
        return eager_on_cpu(super().build_self_attention(embed_dim, cfg))


class TransformerDecoderLayer(transformer_layer.TransformerDecoderLayerBase):
    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        use_cpu_dropout(self)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return eager_on_cpu(super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn))

    def build_encoder_attention(self, embed_dim, cfg):
        return eager_on_cpu(super().build_encoder_attention(embed_dim, cfg))

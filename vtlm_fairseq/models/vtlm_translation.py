"""The NMT/MMT encoder-decoder sharing the ``vtlm`` embedding design, and its
initialisation from a TLM or VTLM checkpoint: the pre-trained encoder fills
both the encoder and the decoder; each decoder layer's cross-attention starts
as a copy of the same layer's self-attention (the reference's
``--init_dec_from_enc``). The initialisation is the task's to run, once, when
fine-tuning starts (``MultimodalTranslationTask.build_model``): building a
model never reads the pre-trained file, so a fine-tuned checkpoint loads
without it."""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.models import (
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.utils import safe_getattr

from ..checkpoints import CheckpointError, read_fairseq_checkpoint
from ..errors import InputError
from ..languages import IMG_LANG, language_ids
from ..modules.cpu_dropout import set_cpu_dropout
from ..modules.embeddings import TextEmbedding
from ..modules.transformer_layer import TransformerDecoderLayer
from .vtlm import VTLMConfig, VTLMEncoder, layer_config, set_layer_norm_eps, vtlm_base, vtlm_tiny

logger = logging.getLogger(__name__)


@dataclass
class VTLMTranslationConfig(VTLMConfig):
    decoder_layers: int = field(
        default=6, metadata={"help": "decoder layers (default: with an architecture, as many as --encoder-layers)"}
    )
    pretrained_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "TLM/VTLM checkpoint that initialises encoder and decoder when fine-tuning starts "
                  "(--task multimodal_translation only; not read again on resume or when loading the "
                  "fine-tuned model) (default: None, random initialisation)"},
    )
    no_cross_attention_init: bool = field(
        default=False,
        metadata={"help": "with --pretrained-checkpoint, leave cross-attention random instead of copying "
                  "self-attention (default: False)"},
    )


def beam_expansion(new_order: torch.Tensor, rows: int) -> int:
    """k when ``new_order`` repeats each of ``rows`` rows k > 1 times in place
    (SequenceGenerator expanding sentences to their beams), else 0."""
    n = new_order.numel()
    if rows == 0 or n <= rows or n % rows:
        return 0
    k = n // rows
    expected = torch.arange(rows, device=new_order.device).repeat_interleave(k)
    return k if torch.equal(new_order, expected) else 0


def text_positions(tokens: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """0, 1, ... over the non-padding tokens of each row (left or right padding)."""
    real = tokens.ne(padding_idx).long()
    return (torch.cumsum(real, dim=1) - 1).clamp(min=0) * real


class TranslationEncoder(VTLMEncoder):
    """Regions (when given) followed by ``</s> src </s>``, in fairseq's
    encoder-output format so that SequenceGenerator encodes each sentence and
    its regions once and reorders the states across beams."""

    def __init__(self, cfg, dictionary, lang_ids: Dict[str, int], source_lang: str, mask_idx, feature_dim):
        super().__init__(
            cfg, dictionary, len(lang_ids), lang_ids[IMG_LANG], mask_idx, feature_dim, with_heads=False
        )
        self.src_lang = lang_ids[source_lang]

    def forward(self, src_tokens, src_lengths=None, region_features=None, region_boxes=None, region_mask=None, **unused):
        out = super().forward(
            src_tokens,
            torch.full_like(src_tokens, self.src_lang),
            text_positions(src_tokens, self.padding_idx),
            region_features=region_features,
            region_boxes=region_boxes,
            region_mask=region_mask,
        )
        return {
            "encoder_out": [out["states"].transpose(0, 1)],  # T x B x C
            "encoder_padding_mask": [out["padding_mask"]],  # B x T
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
        }

    @torch.jit.export
    def reorder_encoder_out(self, encoder_out: Dict[str, List[torch.Tensor]], new_order):
        """Beam search expands each sentence's states to its beams, then
        follows the surviving beams. The expansion is recorded as
        ``beam_size``: the decoder's cross-attention then works on one copy
        per sentence, and a reorder that keeps every row among its sentence's
        beams (identical states) copies nothing."""
        states, padding = encoder_out["encoder_out"][0], encoder_out["encoder_padding_mask"][0]
        beam = encoder_out.get("beam_size", [])
        if beam:
            k = int(beam[0])
            rows = torch.arange(states.shape[1], device=new_order.device)
            if new_order.numel() == states.shape[1] and torch.equal(new_order // k, rows // k):
                return encoder_out
        else:
            k = beam_expansion(new_order, states.shape[1])
            beam = [torch.tensor(k)] if k else []
        return {
            "encoder_out": [states.index_select(1, new_order)],
            "encoder_padding_mask": [padding.index_select(0, new_order)],
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
            "beam_size": beam,
        }


class TranslationDecoder(FairseqIncrementalDecoder):
    """``</s> tgt ...`` with target-language embeddings, fairseq Transformer
    decoder layers (post-LN) cross-attending over all encoder states, and an
    output projection tied to the decoder's embedding plus a bias."""

    def __init__(self, cfg: VTLMTranslationConfig, dictionary, lang_ids: Dict[str, int], target_lang: str):
        super().__init__(dictionary)
        dim = cfg.encoder_embed_dim
        self.padding_idx = dictionary.pad()
        self.tgt_lang = lang_ids[target_lang]
        self.max_positions_ = cfg.max_positions
        self.text_embedding = TextEmbedding.build(
            len(dictionary), len(lang_ids), dim, self.padding_idx, cfg.max_positions, cfg.dropout, cfg.layer_norm_eps
        )
        self.embed_tokens = self.text_embedding.embed_tokens
        self.embed_langs = self.text_embedding.embed_langs
        tc = layer_config(cfg)
        self.layers = nn.ModuleList([TransformerDecoderLayer(tc) for _ in range(cfg.decoder_layers)])
        set_layer_norm_eps(self.layers, cfg.layer_norm_eps)
        self.lm_bias = nn.Parameter(torch.zeros(len(dictionary)))
        set_cpu_dropout(self, cfg.cpu_dropout == "fast")
        self._future_mask = torch.empty(0)

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, features_only=False, **unused):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **unused):
        positions = text_positions(prev_output_tokens, self.padding_idx)
        if incremental_state is not None:  # one new token per step
            prev_output_tokens = prev_output_tokens[:, -1:]
            positions = positions[:, -1:]
        x = self.text_embedding(prev_output_tokens, torch.full_like(prev_output_tokens, self.tgt_lang), positions)
        x = x.transpose(0, 1)
        enc = encoder_out["encoder_out"][0] if encoder_out is not None else None
        enc_padding = encoder_out["encoder_padding_mask"][0] if encoder_out is not None else None
        # fairseq's beamable cross-attention (keys and values of one beam per
        # sentence, never reordered), in beam search only: elsewhere rows
        # are not grouped by sentence
        beam = 1
        if incremental_state is not None and encoder_out is not None and encoder_out.get("beam_size"):
            beam = int(encoder_out["beam_size"][0])
        for layer in self.layers:
            layer.encoder_attn.set_beam_size(beam)
        self_attn_mask = self.buffered_future_mask(x) if incremental_state is None else None
        padding = prev_output_tokens.eq(self.padding_idx)
        self_attn_padding_mask = padding if padding.any() else None
        attn = None
        for i, layer in enumerate(self.layers):
            x, layer_attn, _ = layer(
                x,
                enc,
                enc_padding,
                incremental_state,
                self_attn_mask=self_attn_mask,
                self_attn_padding_mask=self_attn_padding_mask,
                need_attn=i == len(self.layers) - 1,
            )
            if layer_attn is not None:
                attn = layer_attn
        return x.transpose(0, 1), {"attn": [attn], "inner_states": None}

    def output_layer(self, features):
        return F.linear(features, self.embed_tokens.weight, self.lm_bias)

    def max_positions(self):
        return self.max_positions_

    def buffered_future_mask(self, tensor):
        dim = tensor.size(0)
        if self._future_mask.size(0) < dim or self._future_mask.device != tensor.device:
            self._future_mask = torch.triu(utils.fill_with_neg_inf(torch.zeros([dim, dim])), 1)
        return self._future_mask[:dim, :dim].to(tensor)


@register_model("vtlm_translation", dataclass=VTLMTranslationConfig)
class VTLMTranslationModel(FairseqEncoderDecoderModel):
    """MMT when the task gives regions, NMT otherwise; works with fairseq's
    ``translation`` task too (text only)."""

    # what build_model built the model for, named when a checkpoint does not fit
    data_bin: Optional[str] = None
    feature_store: Optional[str] = None

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """fairseq's hub loading (BaseFairseqModel.from_pretrained), giving
        the plugin's hub interface (vtlm_fairseq.hub.VTLMTranslator: the
        data-bin's text preparation, images); ``region_features=`` names the
        store, other keyword arguments are VTLMTranslator.from_pretrained's."""
        from ..hub import VTLMTranslator, fairseq_data_path

        kwargs.pop("user_dir", None)  # fairseq's hub imports the plugin with it; it is imported
        data = fairseq_data_path(model_name_or_path, data_name_or_path)
        return VTLMTranslator.from_pretrained(model_name_or_path, checkpoint_file, data, **kwargs)

    @classmethod
    def build_model(cls, cfg: VTLMTranslationConfig, task):
        from ..tasks.multimodal_translation import MultimodalTranslationTask

        if cfg.pretrained_checkpoint and not isinstance(task, MultimodalTranslationTask):
            # only our task initialises (once, at the start of fine-tuning)
            name = safe_getattr(task.cfg, "_name", None) or type(task).__name__
            raise InputError(
                f"--pretrained-checkpoint {cfg.pretrained_checkpoint}: --task {name} would ignore it; "
                "use --task multimodal_translation (without --region-features for text-only NMT)"
            )
        lang_ids = getattr(task, "lang_ids", None) or language_ids(task.cfg.source_lang, task.cfg.target_lang)
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        mask_idx = getattr(task, "mask_idx", src_dict.unk())
        encoder = TranslationEncoder(
            cfg, src_dict, lang_ids, task.cfg.source_lang, mask_idx, getattr(task, "region_feature_dim", None)
        )
        decoder = TranslationDecoder(cfg, tgt_dict, lang_ids, task.cfg.target_lang)
        model = cls(encoder, decoder)
        model.data_bin = safe_getattr(task.cfg, "data", None)
        store = getattr(task, "store", None)
        model.feature_store = str(store.path) if store is not None else None
        return model

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, **kwargs)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out)

    def load_pretrained(self, path: str, cross_attention: bool = True) -> Dict[str, List[str]]:
        """Fills encoder and decoder from a (V)TLM checkpoint, read safely.
        Every target parameter not filled, and every source weight not used,
        is reported by name; shapes must match (else a CheckpointError naming
        the file and the data-bin)."""
        checkpoint = read_fairseq_checkpoint(path)
        state = checkpoint["model"]
        if any(k.startswith("decoder.") for k in state):
            # a fine-tuned NMT/MMT: its decoder would be thrown away unseen
            raise InputError(
                f"{path}: a fine-tuned translation model (it has a decoder), not a (V)TLM of pre-training; "
                "give the TLM/VTLM checkpoint as --pretrained-checkpoint, or --restore-file/--finetune-from-model "
                "to continue training this one"
            )
        source = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        mapping = {}  # our parameter name -> pre-trained name
        for name in self.encoder.state_dict():
            mapping[f"encoder.{name}"] = name
        decoder_names = self.decoder.state_dict()
        for name in decoder_names:
            if ".encoder_attn." in name:
                if cross_attention:
                    mapping[f"decoder.{name}"] = name.replace(".encoder_attn.", ".self_attn.")
            elif ".encoder_attn_layer_norm." not in name:
                mapping[f"decoder.{name}"] = name
        own = self.state_dict()
        loaded, fresh = {}, []
        for target, src in mapping.items():
            if src not in source:
                fresh.append(target)
                continue
            if source[src].shape != own[target].shape:
                raise CheckpointError(
                    f"{path}: '{src}' has shape {tuple(source[src].shape)}, "
                    f"'{target}' needs {tuple(own[target].shape)} for {self._built_from()} "
                    "(pre-trained on another dictionary, feature dimension or model size?)"
                )
            loaded[target] = source[src]
        fresh += [name for name in own if name not in mapping]
        unused = sorted(set(source) - set(mapping.values()))
        self.load_state_dict({**own, **loaded})
        report = {"loaded": sorted(loaded), "initialised_fresh": sorted(fresh), "unused": unused}
        logger.info(
            "initialised from %s: %d tensors loaded; fresh: %s; unused: %s",
            path,
            len(loaded),
            ", ".join(report["initialised_fresh"]) or "none",
            ", ".join(unused) or "none",
        )
        return report

    def _built_from(self) -> str:
        store = f" and feature store {self.feature_store}" if self.feature_store else " (no feature store)"
        return f"data-bin {self.data_bin}{store}"

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        if strict:
            self.check_fits(state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def check_fits(self, state_dict) -> None:
        """An InputError, one line, for trained weights (--path) that do not
        fit the model built from the given data-bin and feature store: an MMT
        without --region-features, an NMT with them, a store of another
        feature dimension, another dictionary or model size."""
        own = self.state_dict()
        proj = "encoder.region_embedding.feature_proj.weight"
        store = self.feature_store
        if proj in state_dict and proj not in own:
            raise InputError(
                f"the checkpoint (--path) is an MMT taking {state_dict[proj].shape[1]}-dim region features: "
                "give --region-features, a store of the features it was trained with"
            )
        if proj in own and proj not in state_dict:
            raise InputError(
                f"--region-features {store}: the checkpoint (--path) is text-only (NMT, no region layers); "
                "leave out --region-features"
            )
        if proj in own and state_dict[proj].shape[1] != own[proj].shape[1]:
            raise InputError(
                f"{store}: {own[proj].shape[1]}-dim region features, the checkpoint (--path) was trained on "
                f"{state_dict[proj].shape[1]}-dim features: give the store it was trained with"
            )
        tokens = "encoder.embed_tokens.weight"
        if tokens in state_dict and state_dict[tokens].shape[0] != own[tokens].shape[0]:
            raise InputError(
                f"data-bin {self.data_bin}: its dictionary has {own[tokens].shape[0]} types "
                f"(with <mask>), the checkpoint (--path) has {state_dict[tokens].shape[0]}: give the data-bin "
                "the model was trained on"
            )
        for name, value in state_dict.items():
            if name in own and tuple(value.shape) != tuple(own[name].shape):
                raise InputError(
                    f"the checkpoint (--path) has '{name}' of shape {tuple(value.shape)}, the model built for "
                    f"{self._built_from()} and the given options needs {tuple(own[name].shape)}"
                )

    def max_positions(self):
        # +1 for the leading </s> the tasks put before each sentence
        return (self.encoder.max_positions(), self.decoder.max_positions())


def _translation_defaults(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", safe_getattr(args, "encoder_layers", 6))


@register_model_architecture("vtlm_translation", "vtlm_translation_base")
def vtlm_translation_base(args):
    """The paper's 6+6 layers, 512 dims, 8 heads, FFN 2048."""
    vtlm_base(args)
    _translation_defaults(args)


@register_model_architecture("vtlm_translation", "vtlm_translation_tiny")
def vtlm_translation_tiny(args):
    """The shape of vtlm_tiny, for fine-tuning it on CPU."""
    vtlm_tiny(args)
    _translation_defaults(args)

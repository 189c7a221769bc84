"""Conversion of the reference code's checkpoints (an XLM fork) into ours:
TLM/VTLM encoders become ``vtlm`` checkpoints, NMT/MMT encoder-decoders
``vtlm_translation`` ones, each with the fairseq dictionary they need.

What is mapped: the vocabulary (the reference's ids -> a fairseq dictionary
with the same symbols: ``<special1>`` is its [MASK] and becomes our
``<mask>``, the other specials are kept so that softmaxes stay identical),
language rows (by name), the position table (both start at 0: we pass
positions explicitly), the tied output projection and its bias, region
projections, the MRC head, and every layer. A reference tensor that has no
place in our model is reported by name, as is any of our parameters that the
file does not fill."""

import json
import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch
from fairseq import checkpoint_utils, options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

from ..data.splits import MASK_SYMBOL, load_vocabulary
from ..errors import InputError
from ..languages import IMG_LANG, language_ids
from .safe_load import load_reference_checkpoint

logger = logging.getLogger(__name__)

KINDS = ("tlm", "vtlm", "nmt", "mmt")
REFERENCE_SPECIALS = {"<s>": "bos", "</s>": "eos", "<pad>": "pad", "<unk>": "unk"}
REFERENCE_MASK = "<special1>"  # XLM's MASK_WORD


class ConversionError(InputError):
    pass


@dataclass
class ConversionReport:
    kind: str
    converted: List[str] = field(default_factory=list)  # our parameter names
    not_in_reference: List[str] = field(default_factory=list)  # ours, left as initialised
    not_mapped: List[str] = field(default_factory=list)  # reference tensors with no place in ours
    notes: List[str] = field(default_factory=list)


def detect_kind(ckpt: Dict) -> str:
    params = ckpt.get("params", {})
    if "model" in ckpt:
        return "vtlm" if params.get("only_vlm") else "tlm"
    if "encoder" in ckpt and "decoder" in ckpt:
        return "mmt" if params.get("mmt_steps") else "nmt"
    raise ConversionError("neither 'model' nor 'encoder'/'decoder' weights: not a reference checkpoint")


def _fairseq_checkpoint_note(ckpt: Dict) -> Optional[str]:
    """What a fairseq checkpoint (not a reference one) is, for the message."""
    cfg = ckpt.get("cfg")
    if not isinstance(cfg, dict) and ckpt.get("args") is None:
        return None
    from fairseq.tasks import TASK_REGISTRY

    task = (cfg or {}).get("task") or {}
    name = task.get("_name") if isinstance(task, dict) else None
    ours = name in TASK_REGISTRY and TASK_REGISTRY[name].__module__.startswith(__package__.split(".")[0])
    return f"a fairseq checkpoint of this plugin (task {name})" if ours else f"a fairseq checkpoint (task {name})"


# tensors every reference model has; the sizes of ours are read from them
REQUIRED_TENSORS = (
    "embeddings.weight", "position_embeddings.weight", "attentions.0.q_lin.weight", "ffns.0.lin1.weight",
)  # fmt: skip


def check_reference(ckpt, path, kind: str = "auto") -> str:
    """The kind of a reference (XLM-format) checkpoint: ``kind`` unless
    "auto". Raises ConversionError naming the file when it is not one (a
    fairseq checkpoint, another file) or has no weights of that kind."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: not a reference (XLM) checkpoint: it holds a {type(ckpt).__name__}")
    if "dico_id2word" not in ckpt:
        note = _fairseq_checkpoint_note(ckpt)
        if note:
            raise ConversionError(
                f"{path}: {note}, not a reference (XLM) one: it needs no conversion (give it to fairseq-generate "
                "--path or --pretrained-checkpoint as it is)"
            )
        keys = ", ".join(map(str, ckpt))
        raise ConversionError(f"{path}: not a reference (XLM) checkpoint: no dico_id2word (keys: {keys})")
    id2word = ckpt["dico_id2word"]
    if not isinstance(id2word, dict) or not all(isinstance(i, int) and isinstance(w, str) for i, w in id2word.items()):
        raise ConversionError(f"{path}: dico_id2word is not a dictionary of ids to words")
    twice = sorted(w for w, n in Counter(id2word.values()).items() if n > 1)
    if twice:
        raise ConversionError(f"{path}: dico_id2word has {', '.join(map(repr, twice[:5]))} under two ids")
    if not isinstance(ckpt.get("params", {}), dict):
        raise ConversionError(f"{path}: its params are not a dictionary")
    _check_supported(ckpt.get("params", {}), path)
    if "model" not in ckpt and not ("encoder" in ckpt and "decoder" in ckpt):
        raise ConversionError(f"{path}: neither 'model' nor 'encoder'/'decoder' weights: not a reference checkpoint")
    found = detect_kind(ckpt)
    if kind == "auto":
        kind = found
    elif kind not in KINDS:
        raise ConversionError(f"kind must be one of {', '.join(KINDS)}: {kind}")
    elif (kind in ("tlm", "vtlm")) != (found in ("tlm", "vtlm")):
        holds = "an encoder ('model': TLM or VTLM)" if found in ("tlm", "vtlm") else "an encoder-decoder (NMT or MMT)"
        raise ConversionError(f"{path}: --kind {kind}, but the file holds {holds}; use --kind auto")
    elif kind != found:  # e.g. a TLM's region layers are untrained initial values
        logger.warning("%s: converted as %s (--kind), although its params say %s", path, kind.upper(), found.upper())
    for module in ("model",) if kind in ("tlm", "vtlm") else ("encoder", "decoder"):
        state = ckpt[module]
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise ConversionError(f"{path}: '{module}' is not a dictionary of tensors")
        missing = [name for name in REQUIRED_TENSORS if name not in state]
        if missing:
            raise ConversionError(f"{path}: '{module}' has no {', '.join(missing)}: not a reference model")
    return kind


def build_dictionary(id2word: Dict[int, str], counts: Dict[str, int]) -> Dictionary:
    """The dictionary to save as dict.txt: the reference's words in its id
    order, without the symbols fairseq adds itself (its four specials, and
    <mask>, which the tasks add on loading)."""
    dictionary = Dictionary()
    for _, word in sorted(id2word.items()):
        if word not in REFERENCE_SPECIALS and word != REFERENCE_MASK:
            dictionary.add_symbol(word, n=int(counts.get(word, 0)))
    return dictionary


def reference_rows(dictionary: Dictionary, id2word: Dict[int, str]) -> torch.Tensor:
    """For each index of ``dictionary`` (as the tasks load it), the reference
    id whose embedding row it takes; every symbol must come from exactly one."""
    ours = {w: getattr(dictionary, f)() for w, f in REFERENCE_SPECIALS.items()}
    ours[REFERENCE_MASK] = dictionary.index(MASK_SYMBOL)
    rows = torch.full((len(dictionary),), -1, dtype=torch.long)
    for ref_id, word in id2word.items():
        rows[ours.get(word, dictionary.index(word))] = ref_id
    if len(dictionary) != len(id2word) or (rows < 0).any():
        raise ConversionError(f"{len(id2word)} reference ids give {len(dictionary)} fairseq symbols (duplicate words?)")
    return rows


def _reference_name(ours: str, decoder: bool) -> Optional[str]:
    """Our (deduplicated) parameter name -> the reference's, per module."""
    fixed = {
        "text_embedding.embed_tokens.weight": "embeddings.weight",
        "text_embedding.embed_positions.weight": "position_embeddings.weight",
        "text_embedding.embed_langs.weight": "lang_embeddings.weight",
        "text_embedding.layer_norm.weight": "layer_norm_emb.weight",
        "text_embedding.layer_norm.bias": "layer_norm_emb.bias",
        "region_embedding.feature_proj.weight": "projector.linear.weight",
        "region_embedding.feature_proj.bias": "projector.linear.bias",
        "region_embedding.box_proj.weight": "regional_encodings.linear.weight",
        "region_embedding.box_proj.bias": "regional_encodings.linear.bias",
        "lm_bias": "pred_layer.proj.bias",
        "region_classifier.weight": "img_pred_layer.proj.weight",
        "region_classifier.bias": "img_pred_layer.proj.bias",
    }
    if ours in fixed:
        return fixed[ours]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", ours)
    if not m:
        return None
    i, module, kind = m.groups()
    attention = {"self_attn": "attentions", "encoder_attn": "encoder_attn"}
    m2 = re.fullmatch(r"(self_attn|encoder_attn)\.(q|k|v|out)_proj", module)
    if m2:
        return f"{attention[m2.group(1)]}.{i}.{m2.group(2)}_lin.{kind}"
    layer_modules = {
        "self_attn_layer_norm": "layer_norm1",
        "encoder_attn_layer_norm": "layer_norm15",
        "final_layer_norm": "layer_norm2",
        "fc1": "ffns.{i}.lin1",
        "fc2": "ffns.{i}.lin2",
    }
    if module not in layer_modules or (module == "encoder_attn_layer_norm" and not decoder):
        return None
    name = layer_modules[module]
    return f"{name.format(i=i)}.{kind}" if "{i}" in name else f"{name}.{i}.{kind}"


def _fill(module: torch.nn.Module, reference: Dict[str, torch.Tensor], prefix: str, decoder: bool,
          vocab_rows: torch.Tensor, lang_rows: torch.Tensor, report: ConversionReport) -> None:  # fmt: skip
    used = set()
    for name, param in module.named_parameters():  # shared tensors listed once
        ref_name = _reference_name(name, decoder)
        if ref_name is None or ref_name not in reference:
            report.not_in_reference.append(prefix + name)
            continue
        value = reference[ref_name].float()
        if ref_name in ("embeddings.weight", "pred_layer.proj.bias"):
            value = value[vocab_rows]
        elif ref_name == "lang_embeddings.weight":
            value = value[lang_rows]
        if value.shape != param.shape:
            raise ConversionError(
                f"{prefix}{name}: the reference's {ref_name} has shape {tuple(value.shape)}, ours {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(value)
        used.add(ref_name)
        report.converted.append(prefix + name)
    tied = reference.get("pred_layer.proj.weight")
    if tied is not None and "embeddings.weight" in reference:
        if not torch.equal(tied, reference["embeddings.weight"]):
            raise ConversionError(f"{prefix}: pred_layer.proj.weight is not tied to embeddings.weight (unsupported)")
        used.add("pred_layer.proj.weight")
    report.not_mapped += [prefix + n for n in reference if n not in used]


def _check_supported(params: Dict, path) -> None:
    unsupported = {
        "gelu_activation": (False, "ReLU feed-forward layers"),
        "sinusoidal_embeddings": (True, "sinusoidal positions"),
        "use_lang_emb": (False, "no language embeddings"),
        "share_inout_emb": (False, "an untied output projection"),
        "scale_emb": (True, "sqrt(d)-scaled embeddings"),
        "visual_relu": (False, "region projections without ReLU"),
    }
    problems = [why for key, (bad, why) in unsupported.items() if key in params and bool(params[key]) == bad]
    if problems:
        raise ConversionError(f"{path}: unsupported reference settings: " + "; ".join(problems))


def _fairseq_cfg(kind: str, params: Dict, dims: Dict[str, int], data_dir: Path, src: str, tgt: str,
                 region_features: Optional[str]):  # fmt: skip
    """A complete fairseq config, parsed exactly as fairseq-train would."""
    task = {"tlm": "translation_lm", "vtlm": "visual_translation_lm"}.get(kind, "multimodal_translation")
    arch = "vtlm_base" if kind in ("tlm", "vtlm") else "vtlm_translation_base"
    argv = [
        str(data_dir), "--user-dir", str(Path(__file__).resolve().parents[1]), "--task", task, "--arch", arch,
        "--source-lang", src, "--target-lang", tgt,
        "--encoder-layers", str(dims["layers"]), "--encoder-embed-dim", str(dims["dim"]),
        "--encoder-ffn-embed-dim", str(dims["ffn"]), "--encoder-attention-heads", str(params.get("n_heads", 8)),
        "--max-positions", str(dims["positions"]), "--num-region-classes", str(dims["classes"]),
        "--dropout", str(params.get("dropout", 0.1)), "--attention-dropout", str(params.get("attention_dropout", 0.0)),
        "--region-dropout", str(params.get("visual_dropout", 0.1)),
    ]  # fmt: skip
    if kind in ("nmt", "mmt"):
        argv += ["--decoder-layers", str(dims["decoder_layers"])]
    if params.get("visual_lnorm"):
        argv += ["--region-layer-norm"]
    if not dims["box_bias"]:
        argv += ["--no-region-box-bias"]
    if region_features and kind in ("vtlm", "mmt"):
        argv += ["--region-features", region_features]
    if kind in ("vtlm", "mmt") and params.get("num_of_regions"):  # the K regions per image it was trained with
        argv += ["--max-regions", str(int(params["num_of_regions"]))]
    if kind == "tlm" or kind == "vtlm":
        argv += ["--criterion", "vtlm_loss"]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    with warnings.catch_warnings():  # Hydra's deprecation notices about fairseq's own use of it
        warnings.simplefilter("ignore")
        return convert_namespace_to_omegaconf(args), argv


def convert(path, out_dir, kind: str = "auto", source_lang: str = "en", target_lang: str = "de",
            region_features: Optional[str] = None, force: bool = False) -> ConversionReport:  # fmt: skip
    """Writes ``out_dir/checkpoint.pt``, ``dict.txt`` (+ ``dict.{src,tgt}.txt``)
    and ``conversion.json`` (an existing checkpoint.pt only with ``force``);
    returns the report."""
    from ..models.vtlm import VTLMModel  # after the plugin registered everything
    from ..models.vtlm_translation import VTLMTranslationModel

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"{out_dir}: not a folder (the output folder)")
    if (out_dir / "checkpoint.pt").exists() and not force:
        raise ConversionError(f"{out_dir / 'checkpoint.pt'}: exists already; use --force to replace it")
    if source_lang == target_lang:
        raise ConversionError(f"source and target language are both {source_lang!r}")
    ckpt = load_reference_checkpoint(path)
    kind = check_reference(ckpt, path, kind)
    params = ckpt.get("params", {})
    if region_features and kind in ("vtlm", "mmt") and not Path(region_features).is_file():
        logger.warning("%s: no such feature store (recorded in the checkpoint's config all the same)", region_features)
    report = ConversionReport(kind=kind)

    # language rows by name: ours are the pair's languages sorted, then img
    ours = language_ids(source_lang, target_lang)
    lang2id = params.get("lang2id") or {"de": 0, "en": 1, IMG_LANG: 2}
    missing = [lang for lang in ours if lang not in lang2id]
    if missing:
        raise ConversionError(f"{path}: no language {', '.join(missing)} (it has {', '.join(lang2id)})")
    lang_rows = torch.tensor([lang2id[lang] for lang in sorted(ours, key=ours.get)])
    unused_langs = [lang for lang in lang2id if lang not in ours]
    if unused_langs:
        report.notes.append(f"language rows not converted: {', '.join(unused_langs)}")

    encoder_state = ckpt["model"] if kind in ("tlm", "vtlm") else ckpt["encoder"]
    regions = kind in ("vtlm", "mmt")
    dims = {
        "dim": encoder_state["embeddings.weight"].shape[1],
        "layers": len({k.split(".")[1] for k in encoder_state if k.startswith("attentions.")}),
        "ffn": encoder_state["ffns.0.lin1.weight"].shape[0],
        "positions": encoder_state["position_embeddings.weight"].shape[0],
        "classes": encoder_state["img_pred_layer.proj.weight"].shape[0]
        if "img_pred_layer.proj.weight" in encoder_state else int(params.get("num_obj_labels", 601)),
        "box_bias": "regional_encodings.linear.bias" in encoder_state,
        "feature_dim": encoder_state["projector.linear.weight"].shape[1]
        if "projector.linear.weight" in encoder_state else None,
    }  # fmt: skip
    if regions and dims["feature_dim"] is None:
        raise ConversionError(f"{path}: a {kind.upper()} checkpoint without region projections (projector.linear)")
    if kind in ("nmt", "mmt"):
        dims["decoder_layers"] = len({k.split(".")[1] for k in ckpt["decoder"] if k.startswith("attentions.")})

    # checked what can be: now the files
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_dict = build_dictionary(ckpt["dico_id2word"], ckpt.get("dico_counts", {}))
    for name in ("dict.txt", f"dict.{source_lang}.txt", f"dict.{target_lang}.txt"):
        saved_dict.save(str(out_dir / name))
    dictionary = load_vocabulary(out_dir / "dict.txt")  # exactly as the tasks will load it
    mask_idx = dictionary.index(MASK_SYMBOL)
    vocab_rows = reference_rows(dictionary, ckpt["dico_id2word"])
    cfg, argv = _fairseq_cfg(kind, params, dims, out_dir.resolve(), source_lang, target_lang, region_features)

    # the registered models' own builders, given what a task would provide
    task = SimpleNamespace(
        dictionary=dictionary, source_dictionary=dictionary, target_dictionary=dictionary,
        lang_ids=ours, mask_idx=mask_idx, region_feature_dim=dims["feature_dim"] if regions else None,
        cfg=SimpleNamespace(source_lang=source_lang, target_lang=target_lang),
    )  # fmt: skip
    if kind in ("tlm", "vtlm"):
        model = VTLMModel.build_model(cfg.model, task)
        _fill(model.encoder, ckpt["model"], "encoder.", False, vocab_rows, lang_rows, report)
    else:
        cfg.model.pretrained_checkpoint = None
        model = VTLMTranslationModel.build_model(cfg.model, task)
        _fill(model.encoder, ckpt["encoder"], "encoder.", False, vocab_rows, lang_rows, report)
        _fill(model.decoder, ckpt["decoder"], "decoder.", True, vocab_rows, lang_rows, report)
    if report.not_in_reference:
        raise ConversionError(f"{path}: the checkpoint does not fill {', '.join(report.not_in_reference)}")

    state = {
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [
            {"criterion_name": "converted", "optimizer_name": "none", "lr_scheduler_state": {}, "num_updates": 0}
        ],
        "extra_state": {"converted_from": str(path), "reference_iterations": ckpt.get("n_total_iter")},
        "last_optimizer_state": None,
    }
    checkpoint_utils.torch_persistent_save(state, str(out_dir / "checkpoint.pt"))
    summary = {
        "source": str(path), "kind": kind, "fairseq_args": argv[1:], "vocabulary": len(dictionary),
        "converted": report.converted, "not_mapped": report.not_mapped, "notes": report.notes,
    }  # fmt: skip
    (out_dir / "conversion.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info(
        "converted %s (%s) -> %s: %d tensors; not mapped (no place in our %s model): %s",
        path, kind.upper(), out_dir / "checkpoint.pt", len(report.converted), kind.upper(),
        ", ".join(report.not_mapped) or "none",
    )  # fmt: skip
    return report

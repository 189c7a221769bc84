"""Python API in the style of fairseq's hub interface: load a trained
NMT/MMT model and translate raw sentences, each with its image.

    from vtlm_fairseq.hub import VTLMTranslator
    mt = VTLMTranslator.from_pretrained("checkpoints/mmt", data="data-bin/multi30k",
                                        region_features="features.h5")
    mt.translate("A man holds a bat.", images="1000092795.jpg")

The text goes through the data-bin's own preparation (Moses pipeline with the
same lowercasing/accent settings, its BPE codes); the output is detokenised.
"""

import json
import os
from typing import List, Optional, Sequence, Union

import torch
from fairseq import checkpoint_utils
from fairseq.data import data_utils
from fairseq.dataclass.configs import GenerationConfig
from sacremoses import MosesDetokenizer

from .data.bpe import BPEApplier
from .data.feature_store import RegionFeatures
from .data.region_dataset import collate_regions, region_item
from .data.splits import split_data_path
from .data.tokenization import MosesPipeline

Image = Union[str, RegionFeatures]


class VTLMTranslator:
    def __init__(self, models, task, data_dir: str, beam: int = 8, lenpen: float = 1.0):
        self.models = [m.eval() for m in models]
        self.task = task
        self.dictionary = task.source_dictionary
        settings = {"lowercase": True, "strip_accents": True}
        manifest = os.path.join(data_dir, "prepare.json")
        if os.path.isfile(manifest):
            with open(manifest) as f:
                config = json.load(f)["config"]
            settings = {k: config[k] for k in settings}
        src, tgt = task.cfg.source_lang, task.cfg.target_lang
        self.tokenize = MosesPipeline(src, **settings)
        codes = os.path.join(data_dir, "bpe.codes")
        if not os.path.isfile(codes):
            raise FileNotFoundError(f"{codes}: the data-bin's BPE codes are needed to encode raw text")
        self.bpe = BPEApplier(codes)
        self.detokenizer = MosesDetokenizer(lang=tgt)
        # the reference's decoding: beam 8, length penalty 1, 1.5 x source + 10
        gen = GenerationConfig(beam=beam, lenpen=lenpen, max_len_a=1.5, max_len_b=10)
        self.generator = task.build_generator(self.models, gen)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        checkpoint_file: str = "checkpoint_best.pt",
        data: Optional[str] = None,
        region_features: Optional[str] = None,
        **kwargs,
    ):
        """``data``: the data-bin (default: the one the model was trained on);
        ``region_features``: the store images are looked up in by name."""
        overrides = {}
        if data:
            overrides["data"] = data
        if region_features:
            overrides["region_features"] = region_features
        path = os.path.join(model_dir, checkpoint_file)
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides)
        return cls(models, task, data or split_data_path(cfg.task.data, epoch=1), **kwargs)

    def encode(self, sentence: str) -> torch.Tensor:
        """Raw sentence -> ``</s> tokens </s>`` ids, as the task feeds the encoder."""
        (bpe,) = self.bpe([self.tokenize(sentence)])
        ids = self.dictionary.encode_line(bpe, add_if_not_exist=False, append_eos=True).long()
        return torch.cat([ids.new_tensor([self.dictionary.eos()]), ids])

    def decode(self, tokens: torch.Tensor) -> str:
        text = self.dictionary.string(tokens, bpe_symbol="@@ ")
        return self.detokenizer.detokenize(text.split())

    @torch.no_grad()
    def translate(
        self, sentences: Union[str, Sequence[str]], images: Union[None, Image, Sequence[Image]] = None
    ) -> Union[str, List[str]]:
        """One sentence (and image) or a list; an image is a name in the
        feature store or a RegionFeatures object."""
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        tokens = [self.encode(s) for s in sentences]
        net_input = {
            "src_tokens": data_utils.collate_tokens(tokens, self.dictionary.pad()),
            "src_lengths": torch.LongTensor([len(t) for t in tokens]),
        }
        store = getattr(self.task, "store", None)
        if store is not None:
            if images is None:
                raise ValueError("this is a multimodal model: give an image for each sentence")
            images = [images] if single or isinstance(images, (str, RegionFeatures)) else list(images)
            if len(images) != len(sentences):
                raise ValueError(f"{len(images)} images for {len(sentences)} sentences")
            regions = collate_regions(
                [region_item(img if isinstance(img, RegionFeatures) else store.read(img), store.num_regions)
                 for img in images]
            )  # fmt: skip
            net_input.update(
                region_features=regions["features"], region_boxes=regions["boxes"], region_mask=regions["mask"]
            )
        elif images is not None:
            raise ValueError("this model was trained without images (NMT)")
        sample = {"net_input": net_input, "id": torch.arange(len(tokens))}
        hypos = self.task.inference_step(self.generator, self.models, sample)
        out = [self.decode(h[0]["tokens"]) for h in hypos]
        return out[0] if single else out

"""Builds the toy world on disk in the formats of real data: raw parallel
text, image lists, a region-feature store, plus the ambiguity annotations, the
contrastive sets and the lexicon that scorers and probes read."""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict

import numpy as np

from ..data.feature_store import FeatureStoreWriter
from ..errors import InputError
from .contrastive import write_contrastive_set
from .lexicon import ALL_NOUNS, AMBIGUOUS, BACKGROUND_CLASSES, COLOURS, check_lexicon
from .scenes import MIN_REGIONS, REGIONS_NEEDED, RegionRenderer, sample_caption, sample_scene

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def config_option(default, help: str, minimum=None, maximum=None, choices=None):
    """A config field with its command-line help (and smallest value,
    largest value, or choices): vtlm-toy-world makes one option of each."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum,
                                            "choices": choices})  # fmt: skip


_option = config_option


@dataclass
class ToyWorldConfig:
    seed: int = _option(1, "seed of everything (a non-negative integer): prototypes, scenes, captions, features", 0)
    train_pairs: int = _option(20000, "training sentence pairs", 1)
    valid_pairs: int = _option(500, "validation sentence pairs", 1)
    test_pairs: int = _option(500, "test sentence pairs", 1)
    # captions describing each scene (as Multi30k/CC images have several)
    captions_per_image: int = _option(10, "captions per training scene (image)", 1)
    eval_captions_per_image: int = _option(5, "captions per validation/test scene (image)", 1)
    num_regions: int = _option(36, "regions per image (R)", MIN_REGIONS)
    feature_dim: int = _option(1536, "region feature dimension (D)", 1)
    dtype: str = _option("float16", "stored feature precision", choices=("float16", "float32"))
    ambiguous_rate: float = _option(0.5, "chance that an object is a sense of an ambiguous noun, in [0, 1]", 0.0)
    feature_noise: float = _option(0.5, "std of the noise added to the class and colour prototypes, non-negative", 0.0)

    def pairs(self, split: str) -> int:
        return getattr(self, f"{split}_pairs")

    def images(self, split: str) -> int:
        per = self.captions_per_image if split == "train" else self.eval_captions_per_image
        return math.ceil(self.pairs(split) / per)

    def check(self) -> None:
        """Raises InputError naming the option (as the command spells it) of
        the first value the world cannot be built with."""
        for f in fields(self):
            value, minimum = getattr(self, f.name), f.metadata["minimum"]
            option = "--" + f.name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{option} {value}: not a number")
            if minimum is not None and value < minimum:
                why = REGIONS_NEEDED if f.name == "num_regions" else ""
                raise InputError(f"{option} {value}: the minimum is {minimum}{why}")
        if self.ambiguous_rate > 1:
            raise InputError(f"--ambiguous-rate {self.ambiguous_rate}: a probability, at most 1")
        if self.dtype not in ("float16", "float32"):
            raise InputError(f"--dtype {self.dtype}: float16 or float32")


def _write(path: Path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def build_toy_world(out_dir, cfg: ToyWorldConfig = ToyWorldConfig()) -> Dict:
    cfg.check()
    check_lexicon()
    start = time.time()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a folder (the toy world's output folder)")
    if (out / "features.h5").exists():
        raise InputError(f"{out / 'features.h5'}: a toy world is there already; remove it or choose another folder")
    for sub in ("raw", "image_splits", "ambiguity"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    renderer = RegionRenderer(cfg.seed, cfg.num_regions, cfg.feature_dim, cfg.feature_noise)
    stats = {}
    with FeatureStoreWriter(
        out / "features.h5",
        num_regions=cfg.num_regions,
        feature_dim=cfg.feature_dim,
        dtype=cfg.dtype,
        attrs={"source": f"vtlm toy world, seed {cfg.seed}"},
    ) as store:
        for split_id, split in enumerate(SPLITS):
            rng = np.random.default_rng([cfg.seed, split_id])
            per_image = math.ceil(cfg.pairs(split) / max(cfg.images(split), 1))
            rows = []  # (image name, caption)
            for i in range(cfg.images(split)):
                scene = sample_scene(rng, cfg.ambiguous_rate)
                name = f"toy_{split}_{i:06d}.jpg"
                store.add(name, renderer.render(rng, scene))
                rows += [(name, sample_caption(rng, scene)) for _ in range(per_image)]
            rows = rows[: cfg.pairs(split)]
            order = rng.permutation(len(rows))  # captions of a scene are not adjacent
            rows = [rows[k] for k in order]
            _write(out / "raw" / f"{split}.en", (c.en for _, c in rows))
            _write(out / "raw" / f"{split}.de", (c.de for _, c in rows))
            _write(out / "image_splits" / f"{split}.txt", (name for name, _ in rows))
            _write(
                out / "ambiguity" / f"{split}.jsonl",
                (
                    json.dumps(
                        [
                            {
                                "en": en,
                                "de": sense.de,
                                "de_np": noun_phrase,
                                "class": sense.class_name,
                                "alternatives": [
                                    s.de for s in AMBIGUOUS[en] if s.de != sense.de
                                ],
                            }
                            for en, sense, noun_phrase in c.ambiguous
                        ],
                        ensure_ascii=False,
                    )
                    for _, c in rows
                ),
            )
            n_amb = sum(1 for _, c in rows if c.ambiguous)
            stats[split] = {
                "pairs": len(rows),
                "images": cfg.images(split),
                "ambiguous_sentences": n_amb,
                "ambiguous_rate": n_amb / max(len(rows), 1),
                "contrastive_examples": write_contrastive_set(out / "contrastive" / split, rows),
            }
            logger.info(
                "toy world %s: %d pairs, %d images, %.1f%% with an ambiguous word",
                split,
                len(rows),
                cfg.images(split),
                100 * stats[split]["ambiguous_rate"],
            )
    lexicon = {
        "nouns": [
            {**asdict(n), "class_id": n.class_id, "ambiguous": n.en in AMBIGUOUS}
            for n in ALL_NOUNS
        ],
        "colours": [asdict(c) for c in COLOURS],
        "background_classes": BACKGROUND_CLASSES,
    }
    with open(out / "lexicon.json", "w", encoding="utf-8") as f:
        json.dump(lexicon, f, indent=1, ensure_ascii=False)
    manifest = {"config": asdict(cfg), "splits": stats, "seconds": round(time.time() - start, 1)}
    with open(out / "world.json", "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest

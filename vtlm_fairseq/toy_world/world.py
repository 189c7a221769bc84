"""Builds the toy world on disk in the formats of real data: raw parallel
text, image lists, a region-feature store, plus the ambiguity annotations and
the lexicon that scorers and probes read."""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict

import numpy as np

from ..data.feature_store import FeatureStoreWriter
from .lexicon import ALL_NOUNS, AMBIGUOUS, BACKGROUND_CLASSES, COLOURS, check_lexicon
from .scenes import RegionRenderer, sample_caption, sample_scene

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class ToyWorldConfig:
    seed: int = 1
    train_pairs: int = 20000
    valid_pairs: int = 500
    test_pairs: int = 500
    # captions describing each scene (as Multi30k/CC images have several)
    captions_per_image: int = 10
    eval_captions_per_image: int = 5
    num_regions: int = 36
    feature_dim: int = 1536
    dtype: str = "float16"
    ambiguous_rate: float = 0.5
    feature_noise: float = 0.5

    def pairs(self, split: str) -> int:
        return getattr(self, f"{split}_pairs")

    def images(self, split: str) -> int:
        per = self.captions_per_image if split == "train" else self.eval_captions_per_image
        return math.ceil(self.pairs(split) / per)


def _write(path: Path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def build_toy_world(out_dir, cfg: ToyWorldConfig = ToyWorldConfig()) -> Dict:
    check_lexicon()
    start = time.time()
    out = Path(out_dir)
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

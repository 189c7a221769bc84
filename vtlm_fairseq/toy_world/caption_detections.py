"""Region features a noisy detector would give for the images of a real
captioned corpus (Multi30k's text and image lists), made from the captions:
the objects a caption names are detected with some recall, frequent scene
classes and random false detections fill the rest. The features are the toy
world's class prototypes plus noise, so grounding can be measured on real
sentence distributions, where the images are not at hand."""

import json
import logging
import math
import re
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..text.corpus import CorpusError, check_parallel, find_text_file, read_lines, read_order_file
from ..data.feature_store import FeatureStoreWriter
from ..errors import InputError
from ..data.words import normalise
from .lexicon import class_ids
from .scenes import RegionPrototypes
from .world import config_option

logger = logging.getLogger(__name__)

ENTITY_WORDS = Path(__file__).resolve().parents[1] / "resources" / "entity_words.en-de.json"

# score ranges: named objects look like confident detections, the rest does not
NAMED_SCORES = (0.6, 1.0)
DUPLICATE_SCORES = (0.3, 0.7)
FALSE_SCORES = (0.2, 0.8)
SCENE_SCORES = (0.05, 0.5)
# words, hyphenated ones (t-shirt) kept whole as the entity list spells them
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


_option = config_option

SCENE_POOLS = ("named", "non-entity")


@dataclass
class CaptionDetectionConfig:
    seed: int = _option(1, "seed of the prototypes and of every image's detections (images are independent)", 0)
    num_regions: int = _option(12, "regions per image (R)", 1)
    feature_dim: int = _option(256, "region feature dimension (D)", 1)
    dtype: str = _option("float16", "stored feature precision", choices=("float16", "float32"))
    recall: float = _option(0.9, "chance that an object a caption names is detected", 0.0, 1.0)
    duplicate_rate: float = _option(0.3, "chance of a second, weaker box on a detected object", 0.0, 1.0)
    false_detections: float = _option(1.0, "mean number of confident detections of random classes per image", 0.0)
    scene_classes: int = _option(
        20, "the classes named most often in the corpus that fill the remaining regions (by frequency)", 1
    )
    scene_pool: str = _option(
        "named",
        "where the filling classes come from: 'named', the classes the corpus names most (people and "
        "clothing fill most images, so the image hardly tells which of them a caption names); "
        "'non-entity', the most named classes outside the probes' entity word list (the clutter is never "
        "what the probes mask, so a detected entity is the caption's)",
        choices=SCENE_POOLS,
    )
    feature_noise: float = _option(0.5, "std of the noise added to the class prototypes", 0.0)

    def check(self) -> None:
        for f in fields(self):
            value, minimum, maximum = getattr(self, f.name), f.metadata["minimum"], f.metadata["maximum"]
            option = "--" + f.name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{option} {value}: not a number")
            if minimum is not None and value < minimum:
                raise InputError(f"{option} {value}: the minimum is {minimum}")
            if maximum is not None and value > maximum:
                raise InputError(f"{option} {value}: a probability, at most {maximum}")
            choices = f.metadata["choices"]
            if choices and value not in choices:
                raise InputError(f"{option} {value}: one of {', '.join(choices)}")


class ObjectNames:
    """English words and phrases -> detector class: the probes' entity word
    list first (curated, with plurals), then the detector's class names
    themselves (lowercased, with a plain plural)."""

    def __init__(self, entity_words=ENTITY_WORDS):
        ids = class_ids()
        self.phrases: Dict[Tuple[str, ...], int] = {}
        for name, cid in ids.items():
            words = tuple(normalise(name).split())
            self.phrases.setdefault(words, cid)
            plural = words[:-1] + (words[-1] + ("es" if words[-1].endswith(("s", "x", "ch", "sh")) else "s"),)
            self.phrases.setdefault(plural, cid)
        self.entity_classes: Set[int] = set()  # the classes of the probes' entity words
        with open(entity_words, encoding="utf-8") as f:
            for entry in json.load(f)["entries"]:
                self.entity_classes.add(ids[entry["class"]])
                for en in entry["en"]:
                    self.phrases[tuple(normalise(en).split())] = ids[entry["class"]]
        self.longest = max(len(p) for p in self.phrases)

    def find(self, caption: str) -> List[int]:
        """Classes named in the caption, longest phrase first, in order."""
        words = [normalise(w) for w in _WORD.findall(caption)]
        found, i = [], 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                cid = self.phrases.get(tuple(words[i : i + n]))
                if cid is not None:
                    found.append(cid)
                    i += n
                    break
            else:
                i += 1
        return found




def read_captioned_images(raw_dir, image_splits_dir, splits: Optional[Sequence[str]], lang: str):
    """{split: [(image name, caption)]} from raw/{split}.{lang}[.gz] and
    image_splits/{split}.txt (Multi30k's layout)."""
    raw_dir, image_splits_dir = Path(raw_dir), Path(image_splits_dir)
    for option, folder in (("RAW_DIR", raw_dir), ("IMAGE_SPLITS", image_splits_dir)):
        if not folder.is_dir():
            raise CorpusError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'} ({option})")
    if not splits:
        splits = sorted(p.stem for p in image_splits_dir.glob("*.txt"))
        if not splits:
            raise CorpusError(f"{image_splits_dir}: no image lists (*.txt) in it")
    out = {}
    for split in splits:
        text = find_text_file(raw_dir, split, lang)
        order = image_splits_dir / f"{split}.txt"
        if text is None:
            raise CorpusError(f"{raw_dir / f'{split}.{lang}'}: no such file (nor .gz), but {order} lists its images")
        if not order.is_file():
            raise CorpusError(f"{order}: no such image list for {text}")
        captions, names = read_lines(text), read_order_file(order)
        check_parallel({str(text): captions, str(order): names})
        out[split] = list(zip(names, captions))
    return out


def detections_for(rng, named: Sequence[int], cfg: CaptionDetectionConfig, scene_pool, scene_weights):
    """(class id, None, score range) per region of one image, and the named
    classes among them."""
    specs = []  # named objects first: the detector keeps its R best boxes
    for cid in named:
        if rng.random() < cfg.recall:
            specs.append((cid, None, NAMED_SCORES))
            if rng.random() < cfg.duplicate_rate:
                specs.append((cid, None, DUPLICATE_SCORES))
    n_named = len(specs)
    n_classes = len(class_ids())
    for cid in rng.integers(n_classes, size=rng.poisson(cfg.false_detections)):
        specs.append((int(cid), None, FALSE_SCORES))
    specs = specs[: cfg.num_regions]
    detected = {cid for cid, _, _ in specs[:n_named]}
    fill = cfg.num_regions - len(specs)
    if fill:
        specs += [(int(c), None, SCENE_SCORES) for c in rng.choice(scene_pool, size=fill, p=scene_weights)]
    return specs, detected


def write_caption_detections(
    raw_dir,
    image_splits_dir,
    out_path,
    cfg: CaptionDetectionConfig = CaptionDetectionConfig(),
    splits: Optional[Sequence[str]] = None,
    lang: str = "en",
    overwrite: bool = False,
) -> Dict:
    """Writes a region-feature store for every image the splits list;
    returns statistics (per split: pairs, named objects, detected)."""
    cfg.check()
    start = time.time()
    corpus = read_captioned_images(raw_dir, image_splits_dir, splits, lang)
    names = ObjectNames()
    named: Dict[str, Set[int]] = {}  # image -> classes its captions name
    mentions: Dict[str, Counter] = {}
    for split, rows in corpus.items():
        mentions[split] = Counter()
        for image, caption in rows:
            found = names.find(caption)
            mentions[split].update(found)
            named.setdefault(image, set()).update(found)
    frequency = Counter(c for classes in named.values() for c in classes)
    if not frequency:
        raise InputError(f"{raw_dir}: no caption names any detector class; is --lang {lang} the caption language?")
    if cfg.scene_pool == "non-entity":
        frequency = Counter({c: n for c, n in frequency.items() if c not in names.entity_classes})
        if not frequency:
            raise InputError(f"{raw_dir}: --scene-pool non-entity: the captions name no class outside the "
                             "entity word list")  # fmt: skip
    # ties broken by class id: the pool does not depend on the corpus's order
    scene = sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.scene_classes]
    scene_pool = np.array([c for c, _ in scene], dtype=np.int64)
    scene_weights = np.array([n for _, n in scene], dtype=np.float64)
    scene_weights /= scene_weights.sum()

    prototypes = RegionPrototypes(cfg.seed, cfg.feature_dim, cfg.feature_noise)
    detected: Dict[str, Set[int]] = {}
    attrs = {"source": "simulated detections from captions (vtlm-toy-world caption-detections)",
             "simulation": json.dumps(asdict(cfg))}  # fmt: skip
    with FeatureStoreWriter(out_path, num_regions=cfg.num_regions, feature_dim=cfg.feature_dim, dtype=cfg.dtype,
                            overwrite=overwrite, attrs=attrs) as store:  # fmt: skip
        for image in sorted(named):  # each image from its own seed: order and splits do not matter
            rng = np.random.default_rng([cfg.seed, zlib.crc32(image.encode("utf-8"))])
            specs, detected[image] = detections_for(rng, sorted(named[image]), cfg, scene_pool, scene_weights)
            store.add(image, prototypes.regions(rng, specs))
    stats = {"images": len(named), "scene_classes": [int(c) for c in scene_pool], "splits": {}}
    for split, rows in corpus.items():
        named_pairs = [(image, c) for image, _ in rows for c in named[image]]
        found = sum(1 for image, c in named_pairs if c in detected[image])
        stats["splits"][split] = {
            "pairs": len(rows),
            "pairs_naming_an_object": sum(1 for image, _ in rows if named[image]),
            "named_objects": len(named_pairs),
            "named_objects_detected": found,
            # these may fill any image: the regions hardly tell whether the caption names them
            "named_objects_of_scene_classes": sum(1 for _, c in named_pairs if c in set(scene_pool.tolist())),
            "mentions": sum(mentions[split].values()),
        }
        logger.info("%s: %d pairs, %d named objects, %.1f%% detected", split, len(rows), len(named_pairs),
                    100 * found / max(len(named_pairs), 1))  # fmt: skip
    stats["seconds"] = round(time.time() - start, 1)
    return stats

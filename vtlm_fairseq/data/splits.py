"""Loading one split of a prepared data-bin: the binarised sentence pairs and,
with a feature store, the regions of each pair through ``{split}.order``.
Shared by the pre-training and the translation tasks."""

import os
from typing import Optional, Tuple

from fairseq import utils
from fairseq.data import Dictionary, data_utils

from ..errors import InputError
from .feature_store import FeatureStore
from .region_dataset import RegionFeatureDataset


MASK_SYMBOL = "<mask>"


def load_vocabulary(path) -> Dictionary:
    """A data-bin's joined dictionary plus ``<mask>``: the vocabulary of the
    tasks' models (and of converted reference checkpoints)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no dictionary (prepare the data with vtlm-prepare)")
    dictionary = Dictionary.load(str(path))
    dictionary.add_symbol(MASK_SYMBOL)
    return dictionary


def split_data_path(data: str, epoch: int) -> str:
    """fairseq's convention: colon-separated folders, one per epoch in turn."""
    paths = utils.split_paths(data)
    return paths[(epoch - 1) % len(paths)]


def load_pair_text(data_path: str, split: str, src: str, tgt: str, dictionary):
    """The two sides of ``{split}.{src}-{tgt}`` (or ``{tgt}-{src}``)."""
    texts = {}
    for lang in (src, tgt):
        candidates = [os.path.join(data_path, f"{split}.{a}-{b}.{lang}") for a, b in ((src, tgt), (tgt, src))]
        prefix = next((p for p in candidates if os.path.exists(p + ".idx")), None)
        if prefix is None:
            raise InputError(f"{candidates[0]}.{{bin,idx}}: split '{split}' not found in {data_path}")
        texts[lang] = data_utils.load_indexed_dataset(prefix, dictionary)
    return texts[src], texts[tgt]


def load_split_regions(
    store: Optional[FeatureStore], data_path: str, split: str, num_pairs: int, cfg
) -> Tuple[Optional[RegionFeatureDataset], Optional[object]]:
    """(regions, indices of the pairs that keep their image) or (None, None)
    without a store; ``cfg`` carries the ImageOptions fields."""
    if store is None:
        return None, None
    order = os.path.join(data_path, f"{split}.order")
    if not os.path.isfile(order):
        raise InputError(f"{order}: no image order file for split '{split}'")
    regions = RegionFeatureDataset.from_order_file(store, order, missing=cfg.missing_images)
    if len(regions) != num_pairs:
        raise InputError(f"{order}: {len(regions)} lines for {num_pairs} sentence pairs")
    if num_pairs and regions.kept_indices is not None and len(regions.kept_indices) == 0:
        raise InputError(f"{order}: none of the {num_pairs} images of split '{split}' is in {store.path}: "
                         "the wrong store for this data-bin?")  # fmt: skip
    if cfg.image_order_seed < 0:
        raise InputError(f"--image-order-seed must be at least 0, not {cfg.image_order_seed}")
    regions.reorder_images(cfg.image_order, cfg.image_order_seed)
    return regions, regions.kept_indices

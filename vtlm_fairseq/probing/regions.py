"""Masked region classification of a pre-trained VTLM on a split, against
the majority-class baseline on the same targets."""

from collections import Counter

import torch

from ..errors import InputError


@torch.no_grad()
def region_classification(model, task, split: str, mask_prob: float = 0.15, batch_size: int = 64) -> dict:
    """Regions chosen with ``mask_prob`` under a fixed seed, inputs masked
    ([MASK] embedding), text unmasked; accuracy vs always guessing the most
    frequent target class."""
    task.cfg.mask_prob = 0.0
    task.cfg.valid_region_mask_prob = mask_prob
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size, seed=1).next_epoch_itr(shuffle=False)
    correct, targets = 0, Counter()
    for batch in itr:
        target = batch["region_target"]
        chosen = target.ge(0)
        _, logits, _ = model(**batch["net_input"], masked_tokens=None, masked_regions=chosen)
        correct += int((logits.argmax(-1) == target[chosen]).sum())
        targets.update(target[chosen].tolist())
    total = sum(targets.values())
    if not total:
        raise InputError(f"split '{split}' of {task.cfg.data}: no region was chosen with probability {mask_prob}; "
                         "give a higher one or a larger split")  # fmt: skip
    majority_class, majority = targets.most_common(1)[0]
    return {
        "split": split,
        "regions": total,
        "mrc_acc": round(100.0 * correct / total, 2),
        "majority_class": majority_class,
        "majority_acc": round(100.0 * majority / total, 2),
    }

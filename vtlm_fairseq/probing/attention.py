"""Where an MMT looks: the decoder's cross-attention over the image regions
while it translates one sentence, drawn as boxes on the image (or on a blank
canvas with class names when no image is at hand) next to a word x region
heat map."""

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..output_paths import check_output_file
from .translation import build_generator


CLASS_NAMES = Path(__file__).resolve().parents[1] / "resources" / "object_vocab.json"


@torch.no_grad()
def region_attention(model, task, split: str, index: int, beam: int = 8) -> Dict[str, object]:
    """Translates sentence ``index`` of ``split``; returns the source and
    target words, the regions (boxes, classes, image name) and the last
    decoder layer's cross-attention over the regions (target x regions,
    averaged over heads, renormalised over the regions)."""
    if getattr(task, "store", None) is None:
        raise InputError("the attention picture needs an MMT (a translation task with --region-features)")
    dataset = split_with_sentences(task, split, [index])
    sample = dataset.collater([dataset[index]])
    generator = build_generator(model, task, beam)
    hypo = task.inference_step(generator, [model], sample)[0][0]
    n_regions = int(sample["net_input"]["region_mask"][0].sum())
    attention = hypo["attention"]  # (source positions incl. regions, target tokens)
    if attention is None:
        raise RuntimeError("the model returned no attention")
    over_regions = attention[:n_regions].t().float()  # target x regions
    share = over_regions.sum(-1)
    over_regions = over_regions / over_regions.sum(-1, keepdim=True).clamp(min=1e-9)
    pair = dataset.pair_index(index)
    image_name = dataset.regions.image_name(pair)  # the task's image order is aligned here
    regions = task.store.read_row(int(dataset.regions.rows[pair]))
    tgt_tokens = hypo["tokens"].tolist()
    return {
        "source": task.source_dictionary.string(sample["net_input"]["src_tokens"][0], "@@ "),
        "target_tokens": [task.target_dictionary[t] for t in tgt_tokens],
        "translation": task.target_dictionary.string(hypo["tokens"], "@@ "),
        "attention": over_regions.numpy(),
        "region_share": share.numpy(),  # of each target token's attention, the part on regions
        "boxes": sample["net_input"]["region_boxes"][0, :n_regions].numpy(),
        "classes": regions.classes[:n_regions],
        "image": image_name,
    }


def split_with_sentences(task, split: str, indices: Sequence[int]):
    """The split, loaded, after checking that it has sentences ``indices``."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    outside = [i for i in indices if not 0 <= i < len(dataset)]
    if outside:
        raise InputError(f"split '{split}' of {task.cfg.data} has sentences 0 to {len(dataset) - 1}: "
                         f"no sentence {', '.join(map(str, outside))}")  # fmt: skip
    return dataset


def picture_paths(out, indices: Sequence[int]) -> List[Path]:
    """Where the pictures of sentences ``indices`` go: ``out``, or with
    several, ``NAME_INDEX.SUFFIX`` beside it; checked to be writable, in a
    format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        known = ", .".join(sorted(formats))
        raise InputError(f"{out}: not a picture file name matplotlib can write (ends in .{known})")
    paths = [out] if len(indices) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in indices]
    return [check_output_file(path, "the attention picture") for path in paths]


def class_names(path=None) -> Dict[int, str]:
    data = json.loads(Path(path or CLASS_NAMES).read_text())
    return {int(k): v for k, v in data.items()}


def draw_region_attention(result: Dict[str, object], path, image_dir: Optional[str] = None,
                          names: Optional[Dict[int, str]] = None, top_regions: int = 8) -> Path:  # fmt: skip
    """Left: the regions most attended to, as boxes (on the image when
    ``image_dir`` has it, else on a blank canvas with class names), each
    labelled with the target words whose strongest region it is. Right: the
    target word x region attention map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patches

    names = names or class_names()
    attention = np.asarray(result["attention"])
    words: List[str] = list(result["target_tokens"])
    classes = result["classes"]
    label = [names.get(int(c), str(int(c))) if classes is not None else f"region {i}"
             for i, c in enumerate(classes if classes is not None else range(attention.shape[1]))]  # fmt: skip
    strongest = attention.argmax(-1)
    ranked = np.argsort(-attention.sum(0))[:top_regions]

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    width, height = 1.0, 1.0
    picture = None
    if image_dir and result["image"]:
        candidate = Path(image_dir) / str(result["image"])
        if candidate.is_file():
            picture = plt.imread(candidate)
            height, width = picture.shape[:2]
    if picture is not None:
        left.imshow(picture)
    else:
        left.set_facecolor("#f7f7f7")
        left.set_xlim(0, 1)
        left.set_ylim(1, 0)
    cmap = plt.get_cmap("tab10")
    for rank, region in enumerate(ranked):
        ymin, xmin, ymax, xmax = result["boxes"][region]
        colour = cmap(rank % 10)
        left.add_patch(patches.Rectangle((xmin * width, ymin * height), (xmax - xmin) * width,
                                         (ymax - ymin) * height, fill=False, lw=2, ec=colour))  # fmt: skip
        using = [w for w, s in zip(words, strongest) if s == region and w != "</s>"]
        text = label[region] + (f"\n← {', '.join(using)}" if using else "")
        left.text(xmin * width + 2e-3 * width, ymin * height, text, fontsize=8, va="top", color="white",
                  bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0))  # fmt: skip
    left.set_xticks([])
    left.set_yticks([])
    left.set_title(f"{result['image'] or 'regions'}: top {len(ranked)} regions by attention", fontsize=9)

    right.imshow(attention[:, ranked].T, aspect="auto", cmap="viridis")
    right.set_yticks(range(len(ranked)), [label[r] for r in ranked], fontsize=8)
    right.set_xticks(range(len(words)), words, rotation=60, ha="right", fontsize=8)
    right.set_title("decoder cross-attention over regions (last layer, mean of heads)", fontsize=9)
    fig.suptitle(f"src: {result['source']}\nmt:  {result['translation']}", fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

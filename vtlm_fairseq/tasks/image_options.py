"""Task options about images, shared by the VTLM and translation tasks."""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

IMAGE_ORDERS = ChoiceEnum(["aligned", "shuffled", "reversed"])


@dataclass
class ImageOptions(FairseqDataclass):
    region_features: Optional[str] = field(
        default=None,
        metadata={"help": "HDF5 region-feature store, or several read as one (e.g. extraction shards): a "
                  "folder of *.h5 stores, a .txt manifest (one store or folder per line, relative to the "
                  "manifest), or a comma-separated list of these; an image in two of them is an error "
                  "(visual_tlm: default DATA/features.h5; multimodal_translation: none means text-only NMT)"},
    )
    max_regions: Optional[int] = field(
        default=None,
        metadata={"help": "use the K regions of highest detection score of each image (the reference's "
                  "--num_of_regions; default: all regions of the store)"},
    )
    missing_images: ChoiceEnum(["fail", "drop"]) = field(
        default="fail",
        metadata={"help": "images absent from the store: fail, or drop those pairs (with a count)"},
    )
    image_order: IMAGE_ORDERS = field(
        default="aligned",
        metadata={"help": "shuffled/reversed: pair sentences with other images (controls, incongruent decoding)"},
    )
    image_order_seed: int = field(default=1, metadata={"help": "seed of the shuffled image order"})

"""vtlm-fairseq: cross-lingual visual pre-training (VTLM) as a fairseq plugin.

Use it with ``fairseq-train --user-dir vtlm_fairseq ...``. Importing the package
registers its tasks, models and criteria with fairseq.
"""

import argparse

import torch

__version__ = "0.1.0"

# torch >= 2.6 loads checkpoints weights-only by default, and fairseq
# checkpoints carry the training arguments as an argparse.Namespace; without
# this, fairseq-generate and resumed training refuse our own checkpoints.
torch.serialization.add_safe_globals([argparse.Namespace])

from . import criterions, models, tasks  # noqa: E402,F401  (fairseq registries)

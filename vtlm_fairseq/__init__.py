"""vtlm-fairseq: cross-lingual visual pre-training (VTLM) as a fairseq plugin.

Use it with ``fairseq-train --user-dir vtlm_fairseq ...``. Importing the package
registers its tasks, models and criteria with fairseq.
"""

import argparse
import logging
import sys

import torch

from .cli.logging_setup import setup_logging  # noqa: E402

# Importing fairseq configures the root logger at DEBUG (in its
# text_to_speech task) unless logging is set up already: set it up first,
# as fairseq's own commands do, and keep h5py's debug chatter out.
setup_logging()
logging.getLogger("h5py").setLevel(logging.INFO)
# fairseq-train and fairseq-validate log to stdout; logs belong on stderr,
# so that stdout carries only what a command prints for machines
for _handler in logging.getLogger().handlers:
    if isinstance(_handler, logging.StreamHandler) and getattr(_handler, "stream", None) is sys.stdout:
        _handler.setStream(sys.stderr)

__version__ = "0.1.0"

# torch >= 2.6 loads checkpoints weights-only by default, and fairseq
# checkpoints carry the training arguments as an argparse.Namespace; without
# this, fairseq-generate and resumed training refuse our own checkpoints.
torch.serialization.add_safe_globals([argparse.Namespace])

from .errors import install_input_error_hook  # noqa: E402

# Inside fairseq-train/generate/interactive/validate our input errors (a
# broken store, a missing image, a bad line) end the run as one line, exit 2.
install_input_error_hook()

from . import checkpoint_safety  # noqa: E402

# fairseq copies a saved checkpoint to checkpoint_last.pt in place: make
# that copy atomic, so that a kill or a full disk never corrupts it.
checkpoint_safety.install()

from . import clean_exit  # noqa: E402

# fairseq's batch-prefetching thread, torn down inside torch's C++ code at
# exit, aborts a finished run (status 134): stop it first.
clean_exit.install()

from . import criterions, models, tasks  # noqa: E402,F401  (fairseq registries)

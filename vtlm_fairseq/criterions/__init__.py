"""fairseq criteria of the plugin."""

from . import vtlm_loss  # noqa: F401

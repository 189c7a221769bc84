"""fairseq models of the plugin."""

from . import vtlm, vtlm_translation  # noqa: F401

"""fairseq models of the plugin."""

from . import vtlm  # noqa: F401

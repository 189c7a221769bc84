"""fairseq tasks of the plugin."""

from . import translation_lm, visual_translation_lm  # noqa: F401

"""fairseq tasks of the plugin."""

from . import multimodal_translation, translation_lm, visual_translation_lm  # noqa: F401

"""A small grounded En-De corpus whose images carry what the English text does not."""
from .ambiguity import ambiguous_word_accuracy, read_annotations  # noqa: F401
from .world import ToyWorldConfig, build_toy_world  # noqa: F401

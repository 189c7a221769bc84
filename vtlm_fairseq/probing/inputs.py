"""What the probes read besides checkpoints, checked up front so that a
bad input is one line naming the file, not a traceback after minutes of
decoding: toy-world annotations (output paths: ``output_paths``)."""

from typing import List, Sequence

from ..data.splits import split_data_path
from ..errors import InputError


class Annotations(list):
    """A toy world's ambiguity annotations (line i: the ambiguous words of
    sentence pair i) and the file they come from, for the messages."""

    def __init__(self, items=(), path="annotations"):
        super().__init__(items)
        self.path = str(path)


def read_annotation_file(path) -> Annotations:
    """``WORLD/ambiguity/{split}.jsonl``, each line checked (by the toy
    world's own reader), kept with its path for the messages."""
    from ..toy_world import read_annotations

    return Annotations(read_annotations(path), path)


def annotations_path(annotations) -> str:
    return getattr(annotations, "path", "annotations")


def check_annotations(annotations: Sequence[List[dict]], pairs: int, task, split: str) -> None:
    """One line of annotations per sentence pair of the split."""
    if len(annotations) != pairs:
        data = split_data_path(task.cfg.data, epoch=1)
        raise InputError(f"{annotations_path(annotations)}: {len(annotations)} lines for the {pairs} sentence "
                         f"pairs of split '{split}' in {data} (annotations of another split?)")  # fmt: skip

"""What the probes read and write besides checkpoints, checked up front so
that a bad input is one line naming the file, not a traceback after minutes
of decoding: toy-world annotations and output paths."""

import os
from pathlib import Path
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


def _check_writable(folder: Path, target: Path, what: str) -> None:
    if not os.access(folder, os.W_OK):
        raise InputError(f"{folder}: not writable (for {what} {target})")


def check_output_file(path, what: str) -> Path:
    """A file to be written: not a folder, in a folder that exists."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {what} is a file")
    if not path.parent.is_dir():
        problem = "not a folder" if path.parent.exists() else "no such folder"
        raise InputError(f"{path.parent}: {problem} (for {what} {path})")
    _check_writable(path.parent, path, what)
    return path


def output_folder(path, what: str) -> Path:
    """A folder to write into, made where it is missing."""
    from ..data.image_download import make_output_dir

    path = make_output_dir(path)
    _check_writable(path, path, what)
    return path

"""Output paths checked before any work is done, so that a folder where a
file should go (or the reverse, or a missing or read-only parent) is one
line naming the path, not a traceback after minutes of work."""

import os
from pathlib import Path

from .errors import InputError


def make_output_dir(path) -> Path:
    """Creates a folder (and its parents) for output; InputError when it
    cannot be one (a file of that name, a file on the way, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot be created as a folder ({e.strerror or e})") from None
    return path


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
    path = make_output_dir(path)
    _check_writable(path, path, what)
    return path

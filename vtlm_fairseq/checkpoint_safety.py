"""Checkpoint writing that a kill or a full disk cannot corrupt.

fairseq writes each checkpoint atomically (``NAME.tmp``, then a rename), but
then *copies* it to the other names of the same save (``checkpoint_last.pt``,
``checkpoint_best.pt``, ...) in place: a kill or a full disk during that copy
leaves a truncated ``checkpoint_last.pt``, and the resume fails on it. A
write that fails (disk full) also leaves its ``.tmp`` behind, taking space
that the next save needs. The plugin, once imported (``--user-dir``),
replaces the two steps: copies go to a temporary file renamed over the
target, and a failed write or copy removes its temporary file, so every
checkpoint name is always a complete checkpoint (the last good one after a
failure)."""

import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """``dst_path`` becomes a complete copy of ``src_path``, or stays as it was."""
    if os.path.exists(dst_path) and not overwrite:
        return False
    directory = os.path.dirname(os.path.abspath(dst_path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst_path) + ".", suffix=".tmp", dir=directory)
    try:
        with open(src_path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, dst_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return True


def _removing_tmp_on_failure(save):
    def torch_persistent_save(obj, filename, *args, **kwargs):
        try:
            return save(obj, filename, *args, **kwargs)
        except BaseException:
            if isinstance(filename, str):
                for leftover in (filename + ".tmp",):
                    if os.path.exists(leftover):
                        os.unlink(leftover)
                        logger.error("writing %s failed; removed %s (%s still holds the last good checkpoint)",
                                     filename, leftover, filename)  # fmt: skip
            raise

    torch_persistent_save.vtlm_safe = True
    return torch_persistent_save


def install() -> None:
    """Idempotent; applies to fairseq's local-file checkpoint paths."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if getattr(PathManager.copy, "vtlm_safe", False):
        return
    original_copy = PathManager.copy

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return original_copy(src_path, dst_path, overwrite)  # remote storage: its own semantics
        return atomic_copy(src_path, dst_path, overwrite)

    copy.vtlm_safe = True
    PathManager.copy = staticmethod(copy)
    if not getattr(checkpoint_utils.torch_persistent_save, "vtlm_safe", False):
        checkpoint_utils.torch_persistent_save = _removing_tmp_on_failure(checkpoint_utils.torch_persistent_save)

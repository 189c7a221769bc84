"""fairseq-train with a fault at a chosen moment of checkpoint writing:

    python tests/fairseq_faults.py FAULT:N fairseq-train-arguments...

FAULT (N counts from 1, within this process):
- kill-in-save: the N-th checkpoint write stops half way (SIGKILL)
- kill-after-save: SIGKILL right after the N-th checkpoint is renamed into
  place, before fairseq copies it to checkpoint_last.pt
- kill-in-copy: the N-th copy to checkpoint_last.pt & co. stops half way
- enospc-in-save / enospc-in-copy: the same writes fail half way with a full
  disk (OSError ENOSPC), and keep failing
- none: no fault

Faults are injected under fairseq's and the plugin's code, in the calls they
make to torch.save, os.rename and shutil, so the code under test runs as it
does in fairseq-train."""

import errno
import io
import os
import shutil
import signal
import sys

import torch


def _write_half(data: bytes, out) -> None:
    out.write(data[: len(data) // 2])
    out.flush()
    os.fsync(out.fileno())


def _fail(kind: str) -> None:
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def install(fault: str) -> None:
    if fault == "none":
        return
    name, count = fault.rsplit(":", 1)
    kind, _, where = name.split("-", 2)  # kill|enospc, in|after, save|copy
    count = int(count)
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] >= count if kind == "enospc" else calls["n"] == count

    if where == "save" and name != "kill-after-save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not hit():
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as out:
                    _write_half(buffer.getvalue(), out)
            else:
                _write_half(buffer.getvalue(), f)
            _fail(kind)

        torch.save = save
    elif name == "kill-after-save":
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            real_rename(src, dst, *args, **kwargs)
            if str(src).endswith(".tmp") and hit():
                _fail(kind)

        os.rename = rename
    elif where == "copy":
        # fairseq's own copy uses shutil.copyfile, the plugin's copyfileobj
        real_copyfileobj = shutil.copyfileobj

        def copyfileobj(src, dst, *args, **kwargs):
            if not hit():
                return real_copyfileobj(src, dst, *args, **kwargs)
            _write_half(src.read(), dst)
            _fail(kind)

        def copyfile(src, dst, *args, **kwargs):
            with open(src, "rb") as s, open(dst, "wb") as d:
                copyfileobj(s, d)
            return dst

        shutil.copyfileobj = copyfileobj
        shutil.copyfile = copyfile
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = ["fairseq-train"] + sys.argv[2:]
    from fairseq_cli.train import cli_main

    cli_main()

"""Loading checkpoints without running code from them, whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.

Every pickle global of the file is read from its opcodes and checked against
an allow-list first, so a refusal names what the file wanted to import; then
torch's weights-only unpickler reads it, asked for explicitly (an explicit
``weights_only=True`` is the one setting that environment variable cannot
turn off), restricted to the same list. Used by everything of ours that
loads a checkpoint: the Python API, the probes, the initialisation from a
pre-trained (V)TLM, the reference converter."""

import argparse
import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from .errors import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    pass


# what torch writes for tensors and containers, and _codecs.encode, which
# protocol-2 pickles use for raw bytes (all allowed by torch itself)
TORCH_NAMES = {
    "_codecs.encode",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "collections.OrderedDict",
    "torch.FloatStorage", "torch.DoubleStorage", "torch.HalfStorage", "torch.BFloat16Storage",
    "torch.LongStorage", "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage",
    "torch.ByteStorage", "torch.BoolStorage",
}  # fmt: skip
# fairseq checkpoints hold tensors and plain containers; older ones (and
# --use-old-args runs) also the training arguments as an argparse.Namespace
FAIRSEQ_GLOBALS: List[Tuple[object, str]] = [(argparse.Namespace, "argparse.Namespace")]


def pickle_globals(data: bytes) -> Set[str]:
    """Every global a pickle would import (GLOBAL, INST and STACK_GLOBAL),
    found by reading its opcodes, never by executing them. STACK_GLOBAL's
    names are the last two strings pushed; a pickle that builds them another
    way still meets torch's weights-only unpickler, which resolves names
    itself."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]) if len(strings) >= 2 else "<unresolved STACK_GLOBAL>")
        elif op.name.startswith("EXT"):
            found.add(f"<copyreg extension {arg}>")
        elif isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
    return found


def _pickles_of(path: Path) -> List[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
    # torch's legacy format: several pickles one after another
    data, out = path.read_bytes(), []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        start = stream.tell()
        try:
            for _ in pickletools.genops(stream):
                pass
        except Exception:
            break  # raw tensor storage follows the pickles
        out.append(data[start : stream.tell()])
    return out


def read_torch_file(path, allowed: Sequence[Tuple[object, str]], what: str) -> Dict:
    """The file as plain Python objects and tensors. Raises
    UnsafeCheckpointError naming any global outside ``allowed`` (and torch's
    own tensor names), before anything is unpickled; ``what`` says what the
    file should be, for the messages."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        pickles = _pickles_of(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable {what} ({e})") from None
    if not pickles:
        raise CheckpointError(f"{path}: not a {what} (no torch pickle in it; truncated or another format?)")
    try:
        imported = set().union(*(pickle_globals(p) for p in pickles))
    except Exception as e:  # a truncated pickle
        raise CheckpointError(f"{path}: not a complete {what} ({e})") from None
    refused = sorted(imported - {name for _, name in allowed} - TORCH_NAMES)
    if refused:
        hint = ""
        if what == "fairseq checkpoint" and any(name.startswith("numpy.") for name in refused):
            hint = "; a checkpoint of the reference (XLM) code? convert it with vtlm-convert-checkpoint"
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it imports {', '.join(refused)}, which a {what} never holds "
            "(allowed: tensors and plain containers" + (f", {', '.join(n for _, n in allowed)}" if allowed else "")
            + ")" + hint
        )
    # torch's context manager removes its globals on exit, even those that
    # were registered before (the plugin registers argparse.Namespace)
    registered = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([obj for obj, _ in allowed if obj not in registered]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's own weights-only check, as a second guard
            if not zipfile.is_zipfile(path) and not isinstance(e, pickle.UnpicklingError):
                raise CheckpointError(f"{path}: not a {what} (neither torch's zip format nor a complete "
                                      "legacy one; truncated, or another kind of file?)") from None  # fmt: skip
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsafeCheckpointError(f"{path}: weights-only loading failed: {first}") from None


def read_fairseq_checkpoint(path, arg_overrides: Optional[Dict] = None) -> Dict:
    """fairseq's ``load_checkpoint_to_cpu``, with the safe reading above:
    config as OmegaConf, overrides applied, old formats upgraded."""
    from fairseq.checkpoint_utils import _upgrade_state_dict
    from fairseq.dataclass.utils import overwrite_args_by_name
    from omegaconf import OmegaConf

    state = read_torch_file(path, FAIRSEQ_GLOBALS, "fairseq checkpoint")
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    if state.get("args") is not None and arg_overrides:
        for name, value in arg_overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides:
            overwrite_args_by_name(state["cfg"], arg_overrides)
    if state.get("args") is None and state.get("cfg") is None:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'cfg' nor 'args')")
    return _upgrade_state_dict(state)


def load_trained_model(path, arg_overrides: Optional[Dict] = None, state: Optional[Dict] = None):
    """(models, cfg, task) of a trained fairseq checkpoint, read safely. A
    model that does not fit the data it is given (another dictionary, store
    or size) is reported naming the checkpoint."""
    from fairseq import checkpoint_utils

    if state is None:
        state = read_fairseq_checkpoint(path, arg_overrides)
    try:
        return checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    except InputError as e:  # raised by our task or model while building
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
    except RuntimeError as e:
        if "size mismatch" not in str(e) and "Missing key" not in str(e) and "Unexpected key" not in str(e):
            raise
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
        data = (arg_overrides or {}).get("data") or _cfg_get(state, "task", "data")
        raise CheckpointError(
            f"{path}: its weights do not fit the model built from data-bin {data} and the given options "
            f"({detail}); give the data-bin (dictionary) and feature store the model was trained with"
        ) from None


def _cfg_get(state: Dict, section: str, key: str):
    cfg = state.get("cfg")
    if cfg is not None and section in cfg:
        return cfg[section].get(key)
    args = state.get("args")
    return getattr(args, key, None) if args is not None else None

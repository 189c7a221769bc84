"""Reading the reference code's checkpoints (XLM format) without unpickling
arbitrary code: every pickle global in the file is checked against an
allow-list of exactly what such files hold (numpy arrays, dtypes and scalars;
plain containers need no global), then the file is read with torch's
weights-only loader restricted to that list."""

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import torch


class UnsafeCheckpointError(ValueError):
    pass


def _numpy_globals() -> List[Tuple[object, str]]:
    """(object, name as pickled) pairs; numpy 1 pickles say ``numpy.core``,
    numpy 2 ``numpy._core``: both names resolve to the same functions."""
    multiarray = np._core.multiarray
    pairs = []
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        pairs.append((multiarray._reconstruct, f"{module}._reconstruct"))
        pairs.append((multiarray.scalar, f"{module}.scalar"))
    pairs += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    # numpy >= 1.25 pickles a dtype through its class, e.g. numpy.dtypes.Int64DType
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            pairs.append((cls, f"numpy.dtypes.{name}"))
    return pairs


ALLOWED_GLOBALS = _numpy_globals()
ALLOWED_NAMES: Set[str] = {name for _, name in ALLOWED_GLOBALS}
# what torch writes for tensors and containers, and _codecs.encode, which
# protocol-2 pickles use for numpy's raw bytes (all allowed by torch itself)
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


def pickle_globals(data: bytes) -> Set[str]:
    """Every global a pickle would import (GLOBAL and STACK_GLOBAL), found by
    reading its opcodes, never by executing them."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]) if len(strings) >= 2 else "<unresolved STACK_GLOBAL>")
        elif isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
    return found


def _pickles_of(path: Path) -> List[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
    # torch's legacy format: several pickles one after another
    data, out, stream = path.read_bytes(), [], None
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


def load_reference_checkpoint(path) -> Dict:
    """The checkpoint as plain Python objects; raises UnsafeCheckpointError
    naming any global outside the allow-list, before anything is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    pickles = _pickles_of(path)
    if not pickles:
        raise UnsafeCheckpointError(f"{path}: not a torch checkpoint (no pickle found)")
    refused = sorted(set().union(*(pickle_globals(p) for p in pickles)) - ALLOWED_NAMES - TORCH_NAMES)
    if refused:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it imports {', '.join(refused)}, which a reference checkpoint never "
            "holds (allowed: tensors, numpy arrays/dtypes/scalars and plain containers)"
        )
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's own weights-only check, as a second guard
            raise UnsafeCheckpointError(f"{path}: weights-only loading failed: {e}") from e

"""Reading the reference code's checkpoints (XLM format) without unpickling
arbitrary code: every pickle global in the file is checked against an
allow-list of exactly what such files hold (numpy arrays, dtypes and scalars;
plain containers need no global), then the file is read with torch's
weights-only loader restricted to that list."""

from typing import Dict, List, Set, Tuple

import numpy as np

from ..checkpoints import UnsafeCheckpointError, pickle_globals, read_torch_file  # noqa: F401  (re-exported)


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


def load_reference_checkpoint(path) -> Dict:
    """The checkpoint as plain Python objects; raises UnsafeCheckpointError
    naming any global outside the allow-list, before anything is unpickled."""
    return read_torch_file(path, ALLOWED_GLOBALS, "reference checkpoint")

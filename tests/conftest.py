import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VTLM_SHARED", REPO.parent / "shared"))


def shared_path(*parts) -> Path:
    """A path under ../shared; a test that needs it fails, naming what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"{path} is missing: these tests read the project's shared data, which must "
            f"sit beside the repository as ../shared (or set VTLM_SHARED)"
        )
    return path

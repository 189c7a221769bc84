#!/usr/bin/env bash
# Sets up ./.venv (or reuses it) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# setup_env.sh installs the [extract] extra: the TensorFlow tests must run, not skip
export VTLM_REQUIRE_TENSORFLOW=1
exec python -m pytest tests "$@"

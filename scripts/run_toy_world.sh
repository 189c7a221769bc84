#!/usr/bin/env bash
# The main job on the embedded default: sets up ./.venv, then runs the toy
# world end to end (examples/toy_world/run.sh). Output goes to ${WORK:-work_dirs/toy}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
exec bash "$ROOT/examples/toy_world/run.sh" "$@"

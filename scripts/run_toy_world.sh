#!/usr/bin/env bash
# The main job on the embedded default: sets up ./.venv, builds the toy world
# and prepares it as a fairseq data-bin. Output goes to ${WORK:-work_dirs/toy}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
exec bash "$ROOT/examples/toy_world/run.sh" "$@"

#!/usr/bin/env bash
# GPU benchmark (issue area 7): VTLM pre-training and MMT fine-tuning steps at
# vtlm_base size in fp32/fp16/bf16, sentences/s and peak GPU memory. Bounded:
# the run is interrupted after GPU_BENCH_LIMIT seconds (default 540, inside
# 10 minutes) and its JSON keeps every row measured so far.
#
#   bash benchmarks/gpu.sh [--json gpu.json] [--steps 10] [--repeats 5] ...
#   bash benchmarks/gpu.sh --dry-run        # the same code at tiny size on the CPU
#
# Needs the project's Python environment (requirements.txt, `pip install -e .`)
# with a CUDA build of torch; the toy world is built on first use (~30 s).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
LIMIT="${GPU_BENCH_LIMIT:-540}"
cd "$ROOT"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout --signal=INT --kill-after=30 "$LIMIT" "$PYTHON" benchmarks/gpu.py "$@"

#!/usr/bin/env bash
# TLM or VTLM pre-training on Conceptual Captions with the paper's settings
# (section 5 of the reference notes; examples/multi30k/pretrain.sh holds them):
# vtlm_base, Adam lr 1e-4 constant, gradient clipping 5, dropout 0.1, 64
# pairs per update, validation and checkpoints every 300k pairs (4688
# updates), stop when validation masked-LM loss has not improved 50 times.
#
#   examples/conceptual_captions/pretrain.sh tlm  DATA_BIN SAVE_DIR [extra fairseq-train args]
#   examples/conceptual_captions/pretrain.sh vtlm DATA_BIN SAVE_DIR --region-features FEATURES.h5 [...]
#
# GPUS=N (default 1) trains on N GPUs of this machine: fairseq starts one
# process per GPU, each with 64/N pairs, so an update still sees 64 pairs.
# Several machines: run fairseq-train under torchrun on each, e.g.
#   torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
#       "$(command -v fairseq-train)" DATA_BIN ... --batch-size 4
# with the arguments of examples/multi30k/pretrain.sh (fairseq reads the
# world size and ranks that torchrun sets). A run resumes from
# SAVE_DIR/checkpoint_last.pt when started again.
# fairseq-hydra-train form: examples/multi30k/config/pretrain_{tlm,vtlm}.yaml
# with common.log_format=simple common.log_interval=500 (see their headers)
set -euo pipefail
kind="$1"; data="$2"; save="$3"; shift 3
GPUS="${GPUS:-1}"
if [ $((64 % GPUS)) -ne 0 ]; then
    echo "GPUS=$GPUS does not divide the paper's 64 pairs per update" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")/../.." && pwd)"
distributed=()
if [ "$GPUS" -gt 1 ]; then
    distributed=(--distributed-world-size "$GPUS" --batch-size $((64 / GPUS)))
fi
# Conceptual Captions' splits are filtered to the images in the store
# (vtlm-cc filter --features), so a missing image here is an error, not a drop.
exec "$here/examples/multi30k/pretrain.sh" "$kind" "$data" "$save" \
    --log-format simple --log-interval 500 "${distributed[@]}" "$@"

#!/usr/bin/env bash
# NMT or MMT from scratch, the paper's baselines: Adam (0.9, 0.98), lr 1e-4
# with 4000 warm-up updates and inverse square root decay, 64 pairs per batch,
# dropout 0.4, stop on validation BLEU with patience 20 epochs.
#
#   examples/multi30k/from_scratch.sh DATA_BIN SAVE_DIR [--region-features FEATURES.h5] [...]
# fairseq-hydra-train form: examples/multi30k/config/from_scratch_{nmt,mmt}.yaml
set -euo pipefail
data="$1"; save="$2"; shift 2
here="$(cd "$(dirname "$0")/../.." && pwd)"
# AVERAGE=N: keep the last N epoch checkpoints and average them into
# SAVE_DIR/checkpoint_avgN.pt (vtlm-average-checkpoints) after training
epochs=(--no-epoch-checkpoints)
if [ -n "${AVERAGE:-}" ]; then epochs=(--keep-last-epochs "$AVERAGE"); fi
fairseq-train "$data" \
    --user-dir "$here/vtlm_fairseq" --task multimodal_translation \
    --arch vtlm_translation_base --criterion cross_entropy \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 \
    --batch-size 64 --dropout 0.4 --attention-dropout 0.1 \
    --eval-bleu --eval-bleu-remove-bpe --eval-bleu-args '{"beam": 8, "lenpen": 1.0, "max_len_a": 1.5, "max_len_b": 10}' \
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric --patience 20 \
    "${epochs[@]}" --num-workers 4 --save-dir "$save" "$@"
if [ -n "${AVERAGE:-}" ]; then
    vtlm-average-checkpoints --inputs "$save" --num-epoch-checkpoints "$AVERAGE" \
        --output "$save/checkpoint_avg$AVERAGE.pt" --force
fi

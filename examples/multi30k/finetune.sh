#!/usr/bin/env bash
# NMT or MMT fine-tuning from a (V)TLM checkpoint with the paper's settings
# (section 5 of the reference notes): Adam lr 1e-5 constant, 64 pairs per
# batch, dropout 0.2, stop on validation BLEU with patience 20 epochs; beam 8,
# length penalty 1, max length 1.5 x source + 10 for decoding.
#
#   examples/multi30k/finetune.sh nmt DATA_BIN TLM.pt  SAVE_DIR [extra fairseq-train args]
#   examples/multi30k/finetune.sh mmt DATA_BIN VTLM.pt SAVE_DIR --region-features FEATURES.h5 [...]
# then, for every test set (decoding needs --region-features for MMT too):
#   examples/multi30k/translate.sh DATA_BIN SAVE_DIR/checkpoint_best.pt all [--region-features F]
# fairseq-hydra-train form: examples/multi30k/config/finetune_{nmt,mmt}.yaml
set -euo pipefail
kind="$1"; data="$2"; pretrained="$3"; save="$4"; shift 4
case "$kind" in nmt|mmt) ;; *) echo "first argument: nmt or mmt" >&2; exit 2 ;; esac
here="$(cd "$(dirname "$0")/../.." && pwd)"
# AVERAGE=N: keep the last N epoch checkpoints and average them into
# SAVE_DIR/checkpoint_avgN.pt (vtlm-average-checkpoints) after training
epochs=(--no-epoch-checkpoints)
if [ -n "${AVERAGE:-}" ]; then epochs=(--keep-last-epochs "$AVERAGE"); fi
fairseq-train "$data" \
    --user-dir "$here/vtlm_fairseq" --task multimodal_translation \
    --arch vtlm_translation_base --pretrained-checkpoint "$pretrained" \
    --criterion cross_entropy \
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 1e-5 --lr-scheduler fixed \
    --batch-size 64 --dropout 0.2 --attention-dropout 0.1 \
    --eval-bleu --eval-bleu-remove-bpe --eval-bleu-args '{"beam": 8, "lenpen": 1.0, "max_len_a": 1.5, "max_len_b": 10}' \
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric --patience 20 \
    "${epochs[@]}" --num-workers 4 --save-dir "$save" "$@"
if [ -n "${AVERAGE:-}" ]; then
    vtlm-average-checkpoints --inputs "$save" --num-epoch-checkpoints "$AVERAGE" \
        --output "$save/checkpoint_avg$AVERAGE.pt" --force
fi

#!/usr/bin/env bash
# TLM or VTLM pre-training with the paper's settings (Caglayan et al. 2021,
# section 5 of the reference notes): vtlm_base (6 layers, 512, 8 heads),
# Adam lr 1e-4 constant, gradient clipping 5, 64 pairs per batch, stop on
# validation masked-LM perplexity with patience 50 "epochs" of 300k pairs.
#
#   examples/multi30k/pretrain.sh tlm  DATA_BIN SAVE_DIR [extra fairseq-train args]
#   examples/multi30k/pretrain.sh vtlm DATA_BIN SAVE_DIR --region-features FEATURES.h5 [...]
#
# Several GPUs: fairseq spawns one process per visible GPU with
# --distributed-world-size N; keep 64 pairs per update overall with
# --batch-size $((64 / N)). With --region-mask-prob 0 (MRC off) add
# --find-unused-parameters. Several nodes: fairseq's usual
# --distributed-init-method tcp://HOST:PORT --distributed-rank R.
# fairseq-hydra-train form: examples/multi30k/config/pretrain_{tlm,vtlm}.yaml
set -euo pipefail
kind="$1"; data="$2"; save="$3"; shift 3
case "$kind" in
    tlm) task=tlm ;;
    vtlm) task=visual_tlm ;;
    *) echo "first argument: tlm or vtlm" >&2; exit 2 ;;
esac
# 300k pairs / 64 per batch: the reference's "epoch" for validation and
# patience (validation at the end of real epochs is switched off below)
validate_every=4688
here="$(cd "$(dirname "$0")/../.." && pwd)"
fairseq-train "$data" \
    --user-dir "$here/vtlm_fairseq" --task "$task" \
    --arch vtlm_base --criterion vtlm_loss \
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 1e-4 --lr-scheduler fixed \
    --clip-norm 5 --batch-size 64 --dropout 0.1 --attention-dropout 0.1 \
    --validate-interval-updates "$validate_every" --save-interval-updates "$validate_every" \
    --validate-interval 1000000 --save-interval 1000000 \
    --keep-interval-updates 1 --no-epoch-checkpoints \
    --best-checkpoint-metric mlm_loss --patience 50 \
    --num-workers 4 --save-dir "$save" "$@"

#!/usr/bin/env bash
# The toy-world pipeline, end to end on CPU: build the world, prepare it,
# pre-train VTLM, probe it, fine-tune MMT (with images) and NMT (without) from
# it, translate the test set (MMT also with shuffled images), score, run the
# contrastive evaluation, and print a results table. Each stage reuses its
# output when it exists.
#
#   WORK=work_dirs/toy PRETRAIN_UPDATES=1200 FINETUNE_UPDATES=1000 examples/toy_world/run.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-work_dirs/toy}"
WORLD="$WORK/world"
DATA="$WORK/data-bin"
FEATURES="$WORLD/features.h5"
PRETRAIN_UPDATES="${PRETRAIN_UPDATES:-1200}"
FINETUNE_UPDATES="${FINETUNE_UPDATES:-1000}"
USER_DIR="$ROOT/vtlm_fairseq"
mkdir -p "$WORK/results"
source "$HERE/common.sh"

stage "1/7 toy world"
if [ ! -f "$WORLD/world.json" ]; then
    vtlm-toy-world build "$WORLD"
else
    echo "reusing $WORLD"
fi
vtlm-features validate "$FEATURES" --order "$WORLD"/image_splits/{train,valid,test}.txt

stage "2/7 text preparation"
if [ ! -f "$DATA/prepare.json" ]; then
    vtlm-prepare "$WORLD/raw" "$DATA" --image-splits "$WORLD/image_splits" --bpe-merges 2000
else
    echo "reusing $DATA"
fi

stage "3/7 VTLM pre-training ($PRETRAIN_UPDATES updates)"
pretrain vtlm visual_tlm "$PRETRAIN_UPDATES" --mask-prob "${MASK_PROB:-0.15}" --num-workers 1

stage "4/7 probes of the pre-trained VTLM"
vtlm-probe regions "$WORK/vtlm/checkpoint_last.pt" --data "$DATA" --region-features "$FEATURES" \
    --json "$WORK/results/probe_regions.json" | { grep '^{' || true; }
vtlm-probe ambiguous "$WORK/vtlm/checkpoint_last.pt" --data "$DATA" --region-features "$FEATURES" \
    --annotations "$WORLD/ambiguity/valid.jsonl" --seeds 1 2 3 \
    --json "$WORK/results/probe_ambiguous.json" | { grep '^{' || true; }

stage "5/7 MMT fine-tuning from VTLM ($FINETUNE_UPDATES updates)"
finetune mmt "$WORK/vtlm/checkpoint_last.pt" --region-features "$FEATURES"
stage "6/7 NMT fine-tuning from VTLM (text only)"
finetune nmt "$WORK/vtlm/checkpoint_last.pt"

stage "7/7 translating the test set (beam 8) and scoring"
translate() {  # name, checkpoint, extra args
    local name="$1" ckpt="$2"; shift 2
    fairseq-generate "$DATA" --user-dir "$USER_DIR" --task multimodal_translation "$@" \
        --path "$ckpt" --gen-subset test --beam 8 --lenpen 1.0 --max-len-a 1.5 --max-len-b 10 \
        --batch-size 64 --cpu > "$WORK/results/$name.gen.txt" 2> "$WORK/results/$name.gen.log"
    vtlm-score --hyp "$WORK/results/$name.gen.txt" --ref "$WORLD/raw/test.de" \
        --annotations "$WORLD/ambiguity/test.jsonl" --json "$WORK/results/$name.score.json" > /dev/null
}
translate mmt "$WORK/mmt/checkpoint_best.pt" --region-features "$FEATURES"
translate mmt_shuffled "$WORK/mmt/checkpoint_best.pt" --region-features "$FEATURES" --image-order shuffled
translate nmt "$WORK/nmt/checkpoint_best.pt"

# contrastive evaluation on the world's own set: is the correct sense the likelier translation?
if [ -d "$WORLD/contrastive/test" ]; then
    vtlm-probe contrastive "$WORK/nmt/checkpoint_best.pt" "$WORLD/contrastive/test" --data "$DATA" \
        --json "$WORK/results/contrastive_nmt.json" > /dev/null
    vtlm-probe contrastive "$WORK/mmt/checkpoint_best.pt" "$WORLD/contrastive/test" --data "$DATA" \
        --region-features "$FEATURES" --seeds 1 2 3 --json "$WORK/results/contrastive_mmt.json" > /dev/null
else
    echo "$WORLD was built before the toy world wrote contrastive sets: rebuild it for the contrastive rows"
fi

python "$HERE/report.py" "$WORK/results" | tee "$WORK/results/results.md"

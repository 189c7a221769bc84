#!/usr/bin/env bash
# CPU budget run on real Multi30k text (not a CI test): NMT with our
# multimodal_translation task (no images) vs fairseq's built-in translation
# task, same architecture (vtlm_translation_tiny), data, updates and seed; and
# NMT fine-tuned from a TLM pre-trained on the same text for as many updates.
# All four test sets are decoded with beam 5 and scored with vtlm-score.
#
#   benchmarks/multi30k_nmt.sh [WORK] [UPDATES] [SEED]   (defaults: work_dirs/multi30k 4000 1)
# Several seeds: one WORK folder per seed (the data-bin is prepared in each);
# SKIP_TLM=1 runs the two from-scratch systems only. SYSTEMS="a b" runs only
# those (fairseq_translation ours_nmt tlm ours_nmt_from_tlm): several processes
# with different SYSTEMS use several cores; a last run without it makes the table.
# The table over several seeds: python benchmarks/multi30k_table.py WORK_SEED1 WORK_SEED2 ...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-work_dirs/multi30k}"
UPDATES="${2:-4000}"
SEED="${3:-1}"
SHARED="${VTLM_SHARED:-$ROOT/../shared}"
DATA="$WORK/data-bin"
mkdir -p "$WORK/results"
if [ ! -f "$DATA/prepare.json" ]; then
    vtlm-prepare "$SHARED/data/multi30k/raw" "$DATA" --image-splits "$SHARED/data/multi30k/image_splits"
fi
COMMON=(--arch vtlm_translation_tiny --criterion label_smoothed_cross_entropy --label-smoothing 0.1
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 400
        --dropout 0.3 --clip-norm 5 --batch-size 64 --max-update "$UPDATES" --cpu --num-workers 1
        --log-interval 100 --no-epoch-checkpoints --seed "$SEED" --disable-validation)

SYSTEMS="${SYSTEMS:-fairseq_translation ours_nmt tlm ours_nmt_from_tlm}"
wanted() { [[ " $SYSTEMS " == *" $1 "* ]]; }
train() {  # name, args...
    local name="$1"; shift
    wanted "$name" || return 0
    [ -f "$WORK/$name/finished" ] && return  # a killed run resumes from its checkpoint_last.pt
    local start=$SECONDS
    fairseq-train "$DATA" "$@" --save-dir "$WORK/$name" 2>&1 | tee -a "$WORK/$name.log" | grep -E "\| train \|"
    echo "$name: $((SECONDS - start)) s" | tee -a "$WORK/results/times.txt"
    touch "$WORK/$name/finished"
}
TEST_SETS=(test_2016_flickr test_2017_flickr test_2017_mscoco test_2018_flickr)
translate() {  # name, task args...
    local name="$1"; shift
    wanted "$name" || return 0
    for split in "${TEST_SETS[@]}"; do
        local out="$WORK/results/$name.$split"
        if [ ! -s "$out.gen.txt" ]; then  # written whole or not at all
            fairseq-generate "$DATA" "$@" --path "$WORK/$name/checkpoint_last.pt" --gen-subset "$split" \
                --beam 5 --max-len-a 1.5 --max-len-b 10 --batch-size 128 --cpu \
                --required-batch-size-multiple 1 > "$out.gen.txt.tmp"  # else fairseq's task drops sentences
            mv "$out.gen.txt.tmp" "$out.gen.txt"
        fi
        vtlm-score --hyp "$out.gen.txt" --ref "$SHARED/data/multi30k/raw/$split.de.gz" \
            --json "$out.score.json" > /dev/null
    done
}

train fairseq_translation --user-dir "$ROOT/vtlm_fairseq" --task translation -s en -t de "${COMMON[@]}"
translate fairseq_translation --user-dir "$ROOT/vtlm_fairseq" --task translation -s en -t de
train ours_nmt --user-dir "$ROOT/vtlm_fairseq" --task multimodal_translation "${COMMON[@]}"
translate ours_nmt --user-dir "$ROOT/vtlm_fairseq" --task multimodal_translation
if [ "${SKIP_TLM:-0}" != 1 ]; then
train tlm --user-dir "$ROOT/vtlm_fairseq" --task tlm --arch vtlm_tiny --criterion vtlm_loss \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 400 \
    --clip-norm 5 --batch-size 64 --max-update "$UPDATES" --cpu --num-workers 1 --log-interval 100 \
    --no-epoch-checkpoints --seed "$SEED" --disable-validation
train ours_nmt_from_tlm --user-dir "$ROOT/vtlm_fairseq" --task multimodal_translation "${COMMON[@]}" \
    --pretrained-checkpoint "$WORK/tlm/checkpoint_last.pt"
translate ours_nmt_from_tlm --user-dir "$ROOT/vtlm_fairseq" --task multimodal_translation
fi

echo "## Multi30k En-De, vtlm_translation_tiny, $UPDATES updates of 64 pairs, seed $SEED, beam 5"
python "$ROOT/benchmarks/multi30k_table.py" "$WORK"

#!/usr/bin/env bash
# The probe suite on the toy world (issues "pre-training" and "probes"): does
# pre-training with images make the model use them? A smaller world (10k
# pairs, 12 regions of 64 dims) so that pre-training can run long enough on
# CPU for image use to emerge (it appears after about 4,000 updates with 40%
# masking; at 15% the text alone almost always suffices). Steps: world, data,
# TLM and VTLM pre-training, region probe, MMT and NMT fine-tuned from VTLM,
# then `vtlm-probe suite` (tables + plots) and two attention pictures.
#
#   WORK=work_dirs/toy_probes PRETRAIN_UPDATES=9000 FINETUNE_UPDATES=1000 examples/toy_world/probes.sh
# 22 min on 2 CPU cores (pre-training dominates), measured from a fresh clone.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-work_dirs/toy_probes}"
WORLD="$WORK/world"
DATA="$WORK/data-bin"
FEATURES="$WORLD/features.h5"
PRETRAIN_UPDATES="${PRETRAIN_UPDATES:-9000}"
FINETUNE_UPDATES="${FINETUNE_UPDATES:-1000}"
MASK_PROB="${MASK_PROB:-0.4}"
USER_DIR="$ROOT/vtlm_fairseq"
mkdir -p "$WORK/results"
source "$HERE/common.sh"

stage "1/6 toy world (10k pairs, 12 regions x 64 dims)"
[ -f "$WORLD/world.json" ] || vtlm-toy-world build "$WORLD" --train-pairs 10000 --num-regions 12 --feature-dim 64
[ -f "$DATA/prepare.json" ] || vtlm-prepare "$WORLD/raw" "$DATA" --image-splits "$WORLD/image_splits" --bpe-merges 2000

stage "2/6 TLM and VTLM pre-training ($PRETRAIN_UPDATES updates, --mask-prob $MASK_PROB)"
pretrain tlm tlm "$PRETRAIN_UPDATES" --mask-prob "$MASK_PROB" --num-workers 0
pretrain vtlm visual_tlm "$PRETRAIN_UPDATES" --mask-prob "$MASK_PROB" --num-workers 0

stage "3/6 masked region classification of VTLM"
vtlm-probe regions "$WORK/vtlm/checkpoint_last.pt" --data "$DATA" --region-features "$FEATURES" \
    --json "$WORK/results/probe_regions.json" | { grep '^{' || true; }

stage "4/6 MMT and NMT fine-tuned from VTLM ($FINETUNE_UPDATES updates)"
finetune mmt "$WORK/vtlm/checkpoint_last.pt" --region-features "$FEATURES"
finetune nmt "$WORK/vtlm/checkpoint_last.pt"

stage "5/6 the probe suite"
vtlm-probe suite --pretrained TLM="$WORK/tlm/checkpoint_last.pt" VTLM="$WORK/vtlm/checkpoint_last.pt" \
    --translation NMT="$WORK/nmt/checkpoint_best.pt" MMT="$WORK/mmt/checkpoint_best.pt" \
    --data "$DATA" --region-features "$FEATURES" --split test --words "$WORLD/lexicon.json" \
    --annotations valid="$WORLD/ambiguity/valid.jsonl" test="$WORLD/ambiguity/test.jsonl" \
    --seeds 1 2 3 --out "$WORK/results/suite" | { grep -v '^{' || true; }

stage "6/6 attention pictures"
vtlm-probe attention "$WORK/mmt/checkpoint_best.pt" --data "$DATA" --region-features "$FEATURES" \
    --split test --index 0 1 --out "$WORK/results/suite/attention.png" | { grep '^{' || true; }
cat "$WORK/results/suite/probes.md"

#!/usr/bin/env bash
# Conceptual Captions En-De pre-training, end to end, from the paper's TSVs
# (cc-en-de.tsv.{train,valid,test}: id, url, English, German) to TLM and VTLM
# checkpoints, then Multi30k binarised with the same vocabulary for
# fine-tuning. Each stage reuses its output when it exists; the download and
# the extraction resume where they stopped.
#
#   CC=path/with/the/tsvs DETECTOR=path/to/saved_model GPUS=4 WORK=work_dirs/cc \
#       examples/conceptual_captions/run.sh
#
# DETECTOR: the TensorFlow 2 SavedModel of the paper's detector
# (faster_rcnn_inception_resnet_v2_atrous_oid_v4, re-exported with
# detection_features). GPUS: GPUs for extraction and training (default 1).
# BPE_CODES / DICTIONARY: reuse codes (subword-nmt or fastBPE, e.g. the
# reference's bpe50k.codes) and a dictionary instead of learning 50k merges.
# DOWNLOAD_ARGS: extra vtlm-cc download options (e.g. "--processes 16 --threads 128
# --timeout 5"); the download needs the [download] extra (pip install -e '.[download]').
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
: "${CC:?set CC to the folder with the cc-en-de.tsv.train, .valid and .test files}"
WORK="${WORK:-work_dirs/cc}"
GPUS="${GPUS:-1}"
IMAGES="$WORK/images"
FEATURES="$WORK/features"  # extraction shards, read as one store
DATA="$WORK/data-bin"
SHARED="${VTLM_SHARED:-$ROOT/../shared}"
TSVS=("$CC/cc-en-de.tsv.train" "$CC/cc-en-de.tsv.valid" "$CC/cc-en-de.tsv.test")
mkdir -p "$WORK"
stage() { echo; echo "[cc] $(date +%H:%M:%S) $*"; }

stage "1/6 image download -> $IMAGES"
# The marker is written only when a run gets through; until then each start
# resumes (checks what a stopped run finished, fetches what is missing,
# retries timeouts and 5xx, not 404s or broken files).
if [ ! -f "$IMAGES/.complete" ]; then
    # shellcheck disable=SC2086
    vtlm-cc download "${TSVS[@]}" --out "$IMAGES" ${DOWNLOAD_ARGS:-} > "$WORK/download.json"
    touch "$IMAGES/.complete"
else
    echo "reusing $IMAGES (remove $IMAGES/.complete to fetch what is still missing)"
fi
cat "$WORK/download.json" 2>/dev/null || true

stage "2/6 splits with a downloaded image -> $WORK/with_images"
if [ ! -f "$WORK/with_images/filter_report.json" ]; then
    vtlm-cc filter "${TSVS[@]}" --image-dir "$IMAGES" --out "$WORK/with_images" --force > /dev/null
fi
cat "$WORK/with_images/filter_report.json"

stage "3/6 region features on $GPUS GPU(s) -> $FEATURES"
if [ ! -f "$FEATURES/.complete" ]; then
    : "${DETECTOR:?set DETECTOR to the SavedModel folder of the detector}"
    GPUS="$GPUS" "$HERE/extract_features.sh" "$DETECTOR" "$IMAGES" "$WORK/with_images/images.txt" "$FEATURES"
    vtlm-features validate "$FEATURES" > /dev/null  # every shard checked together (no image in two), once
    touch "$FEATURES/.complete"
else
    echo "reusing $FEATURES"
fi

stage "4/6 splits with features -> $WORK/filtered"
# drops the images the detector could not read; keeps every split's identity
if [ ! -f "$WORK/filtered/filter_report.json" ]; then
    vtlm-cc filter "${TSVS[@]}" --image-dir "$IMAGES" --features "$FEATURES" --out "$WORK/filtered" --force > /dev/null
fi
cat "$WORK/filtered/filter_report.json"

stage "5/6 text preparation -> $DATA"
if [ ! -f "$DATA/prepare.json" ]; then
    vocab=()
    [ -n "${BPE_CODES:-}" ] && vocab+=(--bpe-codes "$BPE_CODES")
    [ -n "${DICTIONARY:-}" ] && vocab+=(--dictionary "$DICTIONARY")
    vtlm-cc prepare "$WORK/filtered" "$DATA" --bpe-merges 50000 "${vocab[@]}"
else
    echo "reusing $DATA"
fi

stage "6/6 TLM and VTLM pre-training on $GPUS GPU(s)"
# A stopped run resumes from its checkpoint_last.pt; a finished one (early
# stopping) is not started again, since fairseq would not remember its patience.
pretrain() {  # kind, extra args
    local kind="$1"; shift
    if [ ! -f "$WORK/$kind/.done" ]; then
        GPUS="$GPUS" "$HERE/pretrain.sh" "$kind" "$DATA" "$WORK/$kind" "$@" 2>&1 | tee -a "$WORK/$kind.log"
        mkdir -p "$WORK/$kind" && touch "$WORK/$kind/.done"
    else
        echo "reusing $WORK/$kind"
    fi
}
pretrain tlm
pretrain vtlm --region-features "$FEATURES"

stage "Multi30k with the Conceptual Captions vocabulary -> $WORK/multi30k-bin"
# Fine-tuning needs the pre-training dictionary and BPE codes.
if [ ! -f "$WORK/multi30k-bin/prepare.json" ]; then
    vtlm-prepare "$SHARED/data/multi30k/raw" "$WORK/multi30k-bin" \
        --image-splits "$SHARED/data/multi30k/image_splits" \
        --bpe-codes "$DATA/bpe.codes" --dictionary "$DATA/dict.en.txt"
fi
cat <<NEXT

Next, with Multi30k's region features (MULTI30K_FEATURES.h5):
  $ROOT/examples/multi30k/finetune.sh mmt $WORK/multi30k-bin $WORK/vtlm/checkpoint_best.pt $WORK/mmt --region-features MULTI30K_FEATURES.h5
  $ROOT/examples/multi30k/finetune.sh nmt $WORK/multi30k-bin $WORK/tlm/checkpoint_best.pt $WORK/nmt
  $ROOT/examples/multi30k/translate.sh $WORK/multi30k-bin $WORK/mmt/checkpoint_best.pt test_2016_flickr --region-features MULTI30K_FEATURES.h5
NEXT

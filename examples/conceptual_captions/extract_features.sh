#!/usr/bin/env bash
# Region features for a large image list, sharded: one vtlm-extract-features
# process per GPU, each on every N-th image (round robin), into its own shard
# store; the shards are then merged into one store. Shards resume where they
# stopped (images already in a shard are skipped), so rerun after a crash.
#
#   examples/conceptual_captions/extract_features.sh DETECTOR IMAGE_DIR IMAGE_LIST OUT.h5 [extra args]
#
#   GPUS=4 (default: as many as nvidia-smi lists, else 1): processes on this machine.
#   Several machines: give every machine the same NUM_SHARDS and its own
#   SHARDS, e.g. machine A: NUM_SHARDS=8 SHARDS="0 1 2 3", machine B:
#   NUM_SHARDS=8 SHARDS="4 5 6 7" (shard k runs on local GPU k mod GPUS); the
#   machine that ends up with all 8 shard files merges them (MERGE=1, the default).
# Extra args go to vtlm-extract-features (e.g. --batch-size 8, --max-regions 36).
set -euo pipefail
detector="$1"; image_dir="$2"; image_list="$3"; out="$4"; shift 4
if [ -z "${GPUS:-}" ]; then
    GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [ "$GPUS" -ge 1 ] || GPUS=1
fi
NUM_SHARDS="${NUM_SHARDS:-$GPUS}"
SHARDS="${SHARDS:-$(seq -s ' ' 0 $((NUM_SHARDS - 1)))}"
shard_file() { echo "${out%.h5}.shard$1-of-$NUM_SHARDS.h5"; }
mkdir -p "$(dirname "$out")"

pids=()
for shard in $SHARDS; do
    gpu=$((shard % GPUS))
    echo "[extract] shard $shard of $NUM_SHARDS on GPU $gpu -> $(shard_file "$shard") (log: $(shard_file "$shard").log)"
    CUDA_VISIBLE_DEVICES="$gpu" vtlm-extract-features \
        --detector "$detector" --image-dir "$image_dir" --image-list "$image_list" \
        --output "$(shard_file "$shard")" --num-shards "$NUM_SHARDS" --shard-id "$shard" \
        --max-regions 36 --no-progress "$@" > "$(shard_file "$shard").log" 2>&1 &
    pids+=("$!")
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" -ne 0 ]; then
    echo "[extract] a shard failed; see the logs, then rerun (finished images are kept)" >&2
    exit 1
fi

if [ "${MERGE:-1}" = 1 ]; then
    shards=()
    for shard in $(seq 0 $((NUM_SHARDS - 1))); do
        if [ ! -f "$(shard_file "$shard")" ]; then
            echo "[extract] $(shard_file "$shard") is not here yet: merge when every shard is done" >&2
            exit 0
        fi
        shards+=("$(shard_file "$shard")")
    done
    vtlm-features merge "$out" "${shards[@]}"
    echo "[extract] images the detector could not read: ${out%.h5}.shard*-of-$NUM_SHARDS.failures.jsonl"
fi

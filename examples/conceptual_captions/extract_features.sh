#!/usr/bin/env bash
# Region features for a large image list, sharded: one vtlm-extract-features
# process per GPU, each on every N-th image (round robin), into its own shard
# store OUT_DIR/shard-K-of-N.h5. Training, generation and the probes read the
# folder as one store (--region-features OUT_DIR): no merge of hundreds of GB.
# Shards resume where they stopped (finished parts are kept), so rerun after
# a crash.
#
#   examples/conceptual_captions/extract_features.sh DETECTOR IMAGE_DIR IMAGE_LIST OUT_DIR [extra args]
#
#   GPUS=4 (default: as many as nvidia-smi lists, else 1): processes on this machine.
#   Several machines: give every machine the same NUM_SHARDS and its own
#   SHARDS, e.g. machine A: NUM_SHARDS=8 SHARDS="0 1 2 3", machine B:
#   NUM_SHARDS=8 SHARDS="4 5 6 7" (shard k runs on local GPU k mod GPUS),
#   writing into one OUT_DIR on a shared file system (or copy the shard
#   files together afterwards). MERGE=ONE.h5 also merges the shards into
#   one file (small sets).
# Extra args go to vtlm-extract-features (e.g. --batch-size 8, --max-regions 36).
set -euo pipefail
detector="$1"; image_dir="$2"; image_list="$3"; out_dir="$4"; shift 4
if [ -z "${GPUS:-}" ]; then
    GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [ "$GPUS" -ge 1 ] || GPUS=1
fi
NUM_SHARDS="${NUM_SHARDS:-$GPUS}"
SHARDS="${SHARDS:-$(seq -s ' ' 0 $((NUM_SHARDS - 1)))}"
shard_file() { echo "$out_dir/shard-$1-of-$NUM_SHARDS.h5"; }
mkdir -p "$out_dir"

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

missing=0
for shard in $(seq 0 $((NUM_SHARDS - 1))); do
    [ -f "$(shard_file "$shard")" ] || missing=$((missing + 1))
done
if [ "$missing" -gt 0 ]; then
    echo "[extract] $missing of $NUM_SHARDS shards are not in $out_dir yet (other machines?)" >&2
    exit 0
fi
echo "[extract] $NUM_SHARDS shards in $out_dir: use --region-features $out_dir"
echo "[extract] images the detector could not read: $out_dir/shard-*-of-$NUM_SHARDS.failures.jsonl"
if [ -n "${MERGE:-}" ]; then
    vtlm-features merge "$MERGE" "$out_dir"/shard-*-of-"$NUM_SHARDS".h5
fi

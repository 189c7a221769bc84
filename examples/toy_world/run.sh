#!/usr/bin/env bash
# The toy-world pipeline: build the world, prepare it as a fairseq data-bin.
# Pre-training, fine-tuning, decoding and scoring join here as they land.
set -euo pipefail
WORK="${WORK:-work_dirs/toy}"
WORLD="$WORK/world"
DATA="$WORK/data-bin"

if [ ! -f "$WORLD/world.json" ]; then
    vtlm-toy-world build "$WORLD" "$@"
else
    echo "[toy] reusing $WORLD (delete it to rebuild)"
fi
vtlm-features validate "$WORLD/features.h5" \
    --order "$WORLD"/image_splits/{train,valid,test}.txt
if [ ! -f "$DATA/prepare.json" ]; then
    vtlm-prepare "$WORLD/raw" "$DATA" --image-splits "$WORLD/image_splits" --bpe-merges 2000
else
    echo "[toy] reusing $DATA"
fi

python - "$DATA" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/prepare.json"))
print("\nsplit      pairs")
for name, s in m["splits"].items():
    print(f"{name:10s} {s['pairs']:6d}")
PY
echo
echo "[toy] data ready in $DATA (features: $WORLD/features.h5)."
echo "[toy] pre-training and fine-tuning are not implemented yet: the pipeline stops here."

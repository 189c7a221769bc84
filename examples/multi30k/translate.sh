#!/usr/bin/env bash
# Translate one Multi30k test set with the paper's decoding settings and score it.
#   examples/multi30k/translate.sh DATA_BIN CHECKPOINT SPLIT [--region-features F] [--image-order shuffled]
set -euo pipefail
data="$1"; checkpoint="$2"; split="$3"; shift 3
here="$(cd "$(dirname "$0")/../.." && pwd)"
shared="${VTLM_SHARED:-$here/../shared}"
out="$(dirname "$checkpoint")/$split.gen.txt"
fairseq-generate "$data" --user-dir "$here/vtlm_fairseq" --task multimodal_translation \
    --path "$checkpoint" --gen-subset "$split" \
    --beam 8 --lenpen 1.0 --max-len-a 1.5 --max-len-b 10 --batch-size 64 "$@" > "$out"
vtlm-score --hyp "$out" --ref "$shared/data/multi30k/raw/$split.de.gz"

#!/usr/bin/env bash
# The paper's probes on Multi30k: masked last words for TLM/VTLM, entity
# masking (the package's Multi30k word list) and incongruent images for
# NMT/MMT, on one test set; writes OUT/probes.md, probes.json and the plots,
# plus attention pictures of the first sentences (on the images when
# IMAGE_DIR holds them).
#   examples/multi30k/probes.sh DATA_BIN FEATURES OUT TLM.pt VTLM.pt NMT.pt MMT.pt [SPLIT]
set -euo pipefail
data="$1"; features="$2"; out="$3"; tlm="$4"; vtlm="$5"; nmt="$6"; mmt="$7"; split="${8:-test_2016_flickr}"
vtlm-probe suite --pretrained TLM="$tlm" VTLM="$vtlm" --translation NMT="$nmt" MMT="$mmt" \
    --data "$data" --region-features "$features" --split "$split" --pretrained-split valid \
    --seeds 1 2 3 --out "$out"
image_dir=()
[ -n "${IMAGE_DIR:-}" ] && image_dir=(--image-dir "$IMAGE_DIR")
vtlm-probe attention "$mmt" --data "$data" --region-features "$features" --split "$split" \
    --index 0 1 2 "${image_dir[@]}" --out "$out/attention.png"

#!/usr/bin/env bash
# Translate Multi30k test sets with the paper's decoding settings and score them.
#   examples/multi30k/translate.sh DATA_BIN CHECKPOINT SPLIT|all [--region-features F] [--image-order shuffled]
# SPLIT: test_2016_flickr, test_2017_flickr, test_2017_mscoco, test_2018_flickr or
# any split of DATA_BIN; 'all' decodes the four test sets. Hypotheses go to
# CHECKPOINT_DIR/SPLIT.gen.txt, scores to CHECKPOINT_DIR/SPLIT.scores.json, and
# one JSON object {split: scores} to stdout.
set -euo pipefail
data="$1"; checkpoint="$2"; split="$3"; shift 3
here="$(cd "$(dirname "$0")/../.." && pwd)"
shared="${VTLM_SHARED:-$here/../shared}"
dir="$(dirname "$checkpoint")"
if [ "$split" = all ]; then
    splits=(test_2016_flickr test_2017_flickr test_2017_mscoco test_2018_flickr)
else
    splits=("$split")
fi
for s in "${splits[@]}"; do
    fairseq-generate "$data" --user-dir "$here/vtlm_fairseq" --task multimodal_translation \
        --path "$checkpoint" --gen-subset "$s" \
        --beam 8 --lenpen 1.0 --max-len-a 1.5 --max-len-b 10 --batch-size 64 "$@" > "$dir/$s.gen.txt"
    vtlm-score --hyp "$dir/$s.gen.txt" --ref "$shared/data/multi30k/raw/$s.de.gz" --json "$dir/$s.scores.json" > /dev/null
    echo "[translate] $s: $dir/$s.gen.txt, $dir/$s.scores.json" >&2
done
python3 - "$dir" "${splits[@]}" <<'PY'
import json, sys
d = sys.argv[1]
print(json.dumps({s: json.load(open(f"{d}/{s}.scores.json")) for s in sys.argv[2:]}, indent=2))
PY

#!/usr/bin/env bash
# Grounding on real captions (issue 16): does the MMT use the image when the
# text is not enough? On Multi30k's real text with simulated detections (the
# objects each caption names, found by a noisy detector: vtlm-toy-world
# caption-detections), the same budget for every system:
#
#   nmt            NMT from scratch                     (no images)
#   nmt_tlm        NMT fine-tuned from a TLM            (no images)
#   mmt            MMT from scratch
#   mmt_vtlm       MMT fine-tuned from a VTLM
#   mmt_degraded   MMT from scratch, training sources degraded (entity words masked)
#   mmt_vtlm_degraded  MMT from the VTLM, sources degraded
#   mmt_vtlm_entity    MMT fine-tuned from a VTLM pre-trained with entity-first
#                      masking (--entity-mask-prob: an entity word and its
#                      German translation masked together)
#
# then the probe suite on test_2016_flickr: entity masking (plain, [MASK],
# zeroed [MASK], deleted entity words) with the correct, shuffled and no
# images, and incongruent decoding; and the table (grounding.md).
#
#   examples/multi30k/grounding.sh [WORK] [UPDATES] [PRETRAIN_UPDATES]
#     (defaults: work_dirs/grounding 1000 2500; VTLM_SHARED=path of ../shared)
# Settings: DEGRADE (entity-word mask probability, default 0.5), MASK_PROB
# (pre-training word masking, default 0.4), SEED (default 1), BEAM (5),
# ENTITY_MASK (the entity-first VTLM's --entity-mask-prob, default 0.5),
# SCENE_POOL (the detections' filling classes, default non-entity: the
# image tells which entity a caption names; named: the corpus's most named
# classes fill every image, as in the first measurements), JOBS (trainings
# run at once, default 1; each gets OMP_NUM_THREADS=cores/JOBS unless
# OMP_NUM_THREADS is set),
# SYSTEMS (which of the systems above, default all; the pre-trainings they
# need are trained, the others not).
# Every stage whose output exists is reused; a killed run resumes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-work_dirs/grounding}"
UPDATES="${2:-1000}"
PRETRAIN="${3:-2500}"
SHARED="${VTLM_SHARED:-$ROOT/../shared}"
DEGRADE="${DEGRADE:-0.5}"
MASK_PROB="${MASK_PROB:-0.4}"
ENTITY_MASK="${ENTITY_MASK:-0.5}"
SEED="${SEED:-1}"
BEAM="${BEAM:-5}"
SCENE_POOL="${SCENE_POOL:-non-entity}"
JOBS="${JOBS:-1}"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "JOBS=$JOBS: a whole number of trainings at once, at least 1" >&2; exit 2; }
ALL_SYSTEMS=(nmt nmt_tlm mmt mmt_vtlm mmt_degraded mmt_vtlm_degraded mmt_vtlm_entity)
SYSTEMS="${SYSTEMS:-${ALL_SYSTEMS[*]}}"
for name in $SYSTEMS; do
    [[ " ${ALL_SYSTEMS[*]} " == *" $name "* ]] || { echo "SYSTEMS: no system '$name' (one of: ${ALL_SYSTEMS[*]})" >&2; exit 2; }
done
wanted() { for name in "$@"; do [[ " $SYSTEMS " == *" $name "* ]] && return 0; done; return 1; }
THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}"
M30K="$SHARED/data/multi30k"
DATA="$WORK/data-bin"
FEATURES="$WORK/features.h5"
mkdir -p "$WORK"
stage() { echo "[grounding] $(date +%H:%M:%S) $*" >&2; }

if [ ! -f "$DATA/prepare.json" ]; then
    stage "data-bin (Multi30k, all splits)"
    vtlm-prepare "$M30K/raw" "$DATA" --image-splits "$M30K/image_splits" --force
fi
if [ -f "$FEATURES" ]; then  # reused: the scene pool it was made with must be the one asked for
    made_with="$(python -c 'import h5py, json, sys
with h5py.File(sys.argv[1], "r") as f:
    print(json.loads(f.attrs.get("simulation", "{}")).get("scene_pool", "named"))' "$FEATURES")"
    [ "$made_with" = "$SCENE_POOL" ] || {
        echo "$FEATURES: made with SCENE_POOL=$made_with, not $SCENE_POOL (another WORK folder, or SCENE_POOL=$made_with)" >&2
        exit 2; }
else
    stage "simulated detections -> $FEATURES"
    vtlm-toy-world caption-detections "$M30K/raw" "$M30K/image_splits" "$FEATURES" \
        --num-regions 12 --feature-dim 256 --scene-pool "$SCENE_POOL" --seed "$SEED" > "$WORK/detections.json"
fi

common=(--user-dir "$ROOT/vtlm_fairseq" --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3
        --lr-scheduler inverse_sqrt --warmup-updates 400 --clip-norm 5 --batch-size 64 --cpu --num-workers 1
        --log-format simple --log-interval 100 --no-epoch-checkpoints --disable-validation --seed "$SEED")
train() {  # name, max updates, fairseq-train args...
    local name="$1" updates="$2"; shift 2
    [ -f "$WORK/$name/finished" ] && return
    stage "train $name ($updates updates)"
    OMP_NUM_THREADS="$THREADS" fairseq-train "$DATA" "${common[@]}" --max-update "$updates" \
        --save-dir "$WORK/$name" "$@" 2>> "$WORK/$name.log"
    touch "$WORK/$name/finished"
    stage "trained $name"
}
# a failed or stopped run leaves no training behind: each job's fairseq-train, then the job
# (trainings always run as jobs, so that a TERM or HUP reaches this trap at once)
trap 'for j in $(jobs -p); do pkill -TERM -P "$j" || true; kill "$j" 2>/dev/null || true; done' EXIT
trap 'exit 143' TERM
trap 'exit 129' HUP
pids=()
launch() {  # train, JOBS at a time; a failure stops the script
    [[ " ${ALL_SYSTEMS[*]} " == *" $1 "* ]] && ! wanted "$1" && return 0
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    train "$@" &
    pids+=("$!")
}
# every launched training's own status: two ending together are both checked
finish() { for pid in "${pids[@]}"; do wait "$pid"; done; pids=(); }
pretrain=(--criterion vtlm_loss --arch vtlm_tiny --mask-prob "$MASK_PROB")
wanted nmt_tlm && launch tlm "$PRETRAIN" --task tlm "${pretrain[@]}"
wanted mmt_vtlm mmt_vtlm_degraded && launch vtlm "$PRETRAIN" --task visual_tlm --region-features "$FEATURES" \
    "${pretrain[@]}"
wanted mmt_vtlm_entity && launch vtlm_entity "$PRETRAIN" --task visual_tlm --region-features "$FEATURES" "${pretrain[@]}" \
    --entity-mask-prob "$ENTITY_MASK"

mt=(--task multimodal_translation --arch vtlm_translation_tiny --criterion label_smoothed_cross_entropy
    --label-smoothing 0.1 --dropout 0.3)
images=(--region-features "$FEATURES")
degrade=(--source-entity-mask-prob "$DEGRADE")
launch nmt "$UPDATES" "${mt[@]}"
launch mmt "$UPDATES" "${mt[@]}" "${images[@]}"
launch mmt_degraded "$UPDATES" "${mt[@]}" "${images[@]}" "${degrade[@]}"
finish  # the fine-tunings below start from the pre-trained models
launch nmt_tlm "$UPDATES" "${mt[@]}" --pretrained-checkpoint "$WORK/tlm/checkpoint_last.pt"
launch mmt_vtlm "$UPDATES" "${mt[@]}" "${images[@]}" --pretrained-checkpoint "$WORK/vtlm/checkpoint_last.pt"
launch mmt_vtlm_degraded "$UPDATES" "${mt[@]}" "${images[@]}" "${degrade[@]}" \
    --pretrained-checkpoint "$WORK/vtlm/checkpoint_last.pt"
launch mmt_vtlm_entity "$UPDATES" "${mt[@]}" "${images[@]}" \
    --pretrained-checkpoint "$WORK/vtlm_entity/checkpoint_last.pt"
finish

systems=()  # every trained system, so that probing a new one keeps the others in the table
for name in "${ALL_SYSTEMS[@]}"; do
    [ -f "$WORK/$name/finished" ] && systems+=("$name=$WORK/$name/checkpoint_last.pt")
done
# probed again when a system is not in the probes yet (a run from before it existed)
if ! python - "$WORK/probes/probes.json" "${systems[@]%%=*}" <<'PY'
import json, sys
from pathlib import Path
path = Path(sys.argv[1])
sys.exit(not path.is_file() or bool(set(sys.argv[2:]) - {r["model"] for r in json.loads(path.read_text())}))
PY
then
    stage "probe suite on test_2016_flickr (beam $BEAM)"
    vtlm-probe suite --translation "${systems[@]}" --data "$DATA" --region-features "$FEATURES" \
        --split test_2016_flickr --seeds "$SEED" --beam "$BEAM" --out "$WORK/probes" > /dev/null
fi
python "$ROOT/examples/multi30k/grounding_table.py" "$WORK/probes/probes.json" | tee "$WORK/grounding.md"

# Shared by the toy-world scripts (sourced): stage headers, pre-training and
# fine-tuning with the settings tuned for vtlm_tiny on CPU. Needs WORK, DATA,
# FEATURES and USER_DIR set by the caller.
stage() { echo; echo "[toy] $(date +%H:%M:%S) $*"; }

# pretrain NAME TASK UPDATES [extra fairseq-train args]; reuses NAME/checkpoint_last.pt
# (vtlm_tiny on CPU: a higher learning rate and a shorter warm-up than the
# paper's 1e-4, which is for vtlm_base and days of GPU time)
pretrain() {
    local name="$1" task="$2" updates="$3"; shift 3
    if [ -f "$WORK/$name/checkpoint_last.pt" ] && grep -q "done training" "$WORK/$name.log" 2>/dev/null; then
        echo "reusing $WORK/$name"; return
    fi
    local images=()
    [ "$task" = visual_tlm ] && images=(--region-features "$FEATURES")
    fairseq-train "$DATA" --user-dir "$USER_DIR" --task "$task" "${images[@]}" \
        --arch vtlm_tiny --criterion vtlm_loss \
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 300 \
        --clip-norm 5 --batch-size 64 --max-update "$updates" \
        --cpu --log-interval 100 --no-epoch-checkpoints --save-dir "$WORK/$name" \
        --seed 1 "$@" 2>&1 | tee -a "$WORK/$name.log" | { grep -E "\| (train_inner|valid) \|" || true; }
}

# finetune NAME PRETRAINED_CHECKPOINT [extra args, e.g. --region-features F for MMT]
finetune() {
    local name="$1" pretrained="$2"; shift 2
    if [ -f "$WORK/$name/checkpoint_best.pt" ]; then echo "reusing $WORK/$name"; return; fi
    fairseq-train "$DATA" --user-dir "$USER_DIR" --task multimodal_translation "$@" \
        --arch vtlm_translation_tiny --pretrained-checkpoint "$pretrained" \
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 100 \
        --dropout 0.2 --clip-norm 5 --batch-size 64 --max-update "$FINETUNE_UPDATES" \
        --cpu --num-workers 1 --log-interval 100 --no-epoch-checkpoints --save-dir "$WORK/$name" \
        --seed 1 2>&1 | tee "$WORK/$name.log" | { grep -E "\| (train_inner|valid) \||initialised from" || true; }
}

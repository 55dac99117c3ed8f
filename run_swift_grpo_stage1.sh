#!/usr/bin/env bash
# Stage 1 (SAFE-RL): GRPO from the base model with accuracy + format rewards, plus the
# think-length bonus because the base model has had no SFT (drop it when starting from one).
source "$(dirname "$0")/scripts/common.sh"
REWARD_FUNCS="${REWARD_FUNCS:-$STAGE1_REWARDS}"
run_grpo "$(grpo_start_model stage1)" "${STAGE1_DATASET:-$DATA_DIR/offline_train.jsonl}" "$STAGE1_DIR" \
    "$WARMUP_RATIO" "$@"
merge_lora "$STAGE1_DIR"
echo "stage 1 done: $(merged_dir "$STAGE1_DIR")"

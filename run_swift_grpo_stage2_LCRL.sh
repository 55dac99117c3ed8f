#!/usr/bin/env bash
# Stage 2c (SAFE-LS): length-constrained GRPO from the RSFT model: accuracy + format + a penalty
# on thinking past 200 estimated tokens.
source "$(dirname "$0")/scripts/common.sh"
require_stage "$STAGE2_RSFT_DIR" "run_swift_sft_stage2_RSFT.sh"
REWARD_FUNCS="${REWARD_FUNCS:-$LCRL_REWARDS}"
run_grpo "$(grpo_start_model lcrl)" "${LCRL_DATASET:-$DATA_DIR/offline_train.jsonl}" "$STAGE2_LCRL_DIR" \
    "$WARMUP_RATIO" "$@"
merge_lora "$STAGE2_LCRL_DIR"
echo "stage 2 LCRL done: $(merged_dir "$STAGE2_LCRL_DIR")"

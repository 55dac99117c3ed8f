#!/usr/bin/env bash
# Stage 3 (SAFE-Real): GRPO on growing call prefixes with the real-time prompts: accuracy + format
# + conversation-stage rewards, no warm-up.
source "$(dirname "$0")/scripts/common.sh"
require_stage "$STAGE2_LCRL_DIR" "run_swift_grpo_stage2_LCRL.sh"
REWARD_FUNCS="${REWARD_FUNCS:-$REALTIME_REWARDS}"
run_grpo "$(grpo_start_model realtime)" "${REALTIME_DATASET:-$DATA_DIR/realtime_train.jsonl}" "$STAGE3_DIR" 0 "$@"
merge_lora "$STAGE3_DIR"
echo "stage 3 done: $(merged_dir "$STAGE3_DIR")"

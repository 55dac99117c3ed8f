#!/usr/bin/env bash
# Stage 1 (SAFE-RL): GRPO from the base model with the accuracy and format rewards, plus the think-length bonus
# because the recipe's base model has had no SFT (STAGE1_REWARDS in recipes/paper.yaml).
#   MODEL=/models/Qwen2-Audio-7B-Instruct bash run_swift_grpo_stage1.sh [more swift rlhf arguments]
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
begin_stage stage1
run "$SWIFT" rlhf "${TRAIN[@]}" "$@"
merge_stage stage1
say "stage 1 done: $(run_dir stage1)/merged"

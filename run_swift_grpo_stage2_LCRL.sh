#!/usr/bin/env bash
# Stage 2c (SAFE-LS): length-constrained GRPO from the RSFT model: accuracy + format + a penalty on thinking past
# 200 estimated tokens (LCRL_REWARDS in recipes/paper.yaml).
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
begin_stage lcrl
run "$SWIFT" rlhf "${TRAIN[@]}" "$@"
merge_stage lcrl
say "stage 2 LCRL done: $(run_dir lcrl)/merged"

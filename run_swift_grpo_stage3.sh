#!/usr/bin/env bash
# Stage 3 (SAFE-Real): GRPO on growing call prefixes with the real-time prompts: accuracy + format + the
# conversation-stage reward (REALTIME_REWARDS in recipes/paper.yaml), no warm-up.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
begin_stage realtime
run "$SWIFT" rlhf "${TRAIN[@]}" "$@"
merge_stage realtime
say "stage 3 done: $(run_dir realtime)/merged"

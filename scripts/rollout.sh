#!/usr/bin/env bash
# vLLM server mode: the rollout server of one GRPO stage, on GPUs of its own, started before the stage:
#   CUDA_VISIBLE_DEVICES=3 bash scripts/rollout.sh lcrl &
#   CUDA_VISIBLE_DEVICES=0,1,2 VLLM_MODE=server bash run_swift_grpo_stage2_LCRL.sh
# It serves the model that stage starts from (stage1, lcrl or realtime), with the context length and audio limit
# the colocated engine uses. Arguments after the stage go to `swift rollout`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
key="${1:?usage: bash scripts/rollout.sh stage1|lcrl|realtime [swift rollout arguments]}"
shift
plan_of "$key" rollout_argv=rollout start=start
if [ "${#start[@]}" -gt 0 ]; then require_stage "${start[0]}" "${start[1]}"; fi
say ">>> rollout server ($key): ${rollout_argv[1]} on port $VLLM_SERVER_PORT"
run "$SWIFT" rollout "${rollout_argv[@]}" "$@"

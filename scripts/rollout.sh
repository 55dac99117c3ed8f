#!/usr/bin/env bash
# vLLM server mode: the rollout server of one GRPO stage, on GPUs of its own, started before the stage:
#   CUDA_VISIBLE_DEVICES=3 bash scripts/rollout.sh lcrl &
#   CUDA_VISIBLE_DEVICES=0,1,2 VLLM_MODE=server bash run_swift_grpo_stage2_LCRL.sh
# It serves the model that stage starts from (stage1, lcrl or realtime), with the context length and
# audio limit the colocated engine uses. Arguments after the stage go to `swift rollout`.
source "$(dirname "$0")/common.sh"
stage="${1:?usage: bash scripts/rollout.sh stage1|lcrl|realtime [swift rollout arguments]}"
shift
model="$(grpo_start_model "$stage")"
case "$stage" in
    lcrl) require_stage "$STAGE2_RSFT_DIR" "run_swift_sft_stage2_RSFT.sh" ;;
    realtime) require_stage "$STAGE2_LCRL_DIR" "run_swift_grpo_stage2_LCRL.sh" ;;
esac
echo ">>> rollout server ($stage): $model on port $VLLM_SERVER_PORT"
exec "$SWIFT" rollout --model "$model" --model_type qwen2_audio --template "$TEMPLATE" \
    --external_plugins "$TEMPLATE_PLUGIN" --torch_dtype "$DTYPE" --port "$VLLM_SERVER_PORT" \
    --vllm_max_model_len "$VLLM_MAX_MODEL_LEN" --vllm_limit_mm_per_prompt "{\"audio\": $MAX_AUDIOS_PER_ROW}" \
    --vllm_gpu_memory_utilization "${ROLLOUT_GPU_MEMORY_UTILIZATION:-0.9}" "$@"

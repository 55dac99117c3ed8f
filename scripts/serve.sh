#!/usr/bin/env bash
# Serve a trained model (a stage's merged/ folder) with `swift deploy`: an OpenAI-compatible endpoint that
# `safe_qaq.evaluate`, `safe_qaq.live` and `evaluate.sh` reach with --backend openai (README, "Serving"):
#   bash scripts/serve.sh outputs/stage3_realtime/merged     # SERVE_PORT (8000), SERVED_MODEL_NAME (safe-qaq)
# vLLM on a GPU node (PROFILE=paper), ms-swift's transformers engine otherwise (SERVE_BACKEND overrides).
# Arguments after the model go to `swift deploy`.
source "$(dirname "$0")/common.sh"
model="${1:?usage: bash scripts/serve.sh MODEL_DIR [swift deploy arguments]}"
shift
check_file "$model/config.json" "not a model folder (a stage's merged/ folder is one)"
SERVE_BACKEND="${SERVE_BACKEND:-$([ "$USE_VLLM" = "true" ] && echo vllm || echo transformers)}"
serve_args=(--model "$model" --model_type qwen2_audio --template "$TEMPLATE" --external_plugins "$TEMPLATE_PLUGIN"
            --torch_dtype "$DTYPE" --infer_backend "$SERVE_BACKEND" --served_model_name "${SERVED_MODEL_NAME:-safe-qaq}"
            --host "${SERVE_HOST:-127.0.0.1}" --port "${SERVE_PORT:-8000}")
if [ "$SERVE_BACKEND" = "vllm" ]; then
    serve_args+=(--vllm_max_model_len "$VLLM_MAX_MODEL_LEN"
                 --vllm_limit_mm_per_prompt "{\"audio\": $MAX_AUDIOS_PER_ROW}")
fi
echo ">>> serving $model as ${SERVED_MODEL_NAME:-safe-qaq} on ${SERVE_HOST:-127.0.0.1}:${SERVE_PORT:-8000} ($SERVE_BACKEND)"
exec "$SWIFT" deploy "${serve_args[@]}" "$@"

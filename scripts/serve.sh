#!/usr/bin/env bash
# Serve a trained model (a stage's merged/ folder) with `swift deploy`: an OpenAI-compatible endpoint that
# `safe_qaq.evaluate`, `safe_qaq.live`, the live service and `evaluate.sh` reach with --backend openai:
#   bash scripts/serve.sh outputs/stage3_realtime/merged     # SERVE_HOST, SERVE_PORT, SERVED_MODEL_NAME (recipe)
# vLLM on a GPU node (PROFILE=paper), ms-swift's transformers engine otherwise (SERVE_BACKEND overrides).
# Arguments after the model go to `swift deploy`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
model="${1:?usage: bash scripts/serve.sh MODEL_DIR [swift deploy arguments]}"
shift
check_file "$model/config.json" "not a model folder (a stage's merged/ folder is one)"
argv_of serve_argv - deploy "$model"
say ">>> serving $model as $SERVED_MODEL_NAME on $SERVE_HOST:$SERVE_PORT ($SERVE_BACKEND)"
run "$SWIFT" deploy "${serve_argv[@]}" "$@"

#!/usr/bin/env bash
# Stage 4: evaluate a stage's merged model on the test split (default: SAFE-LS, the LCRL run) with the recipe's
# generation settings -- greedy, with the rollouts' repetition penalty and completion budget. EVAL_RUN, EVAL_MODEL,
# EVAL_DATA, EVAL_OUT, EVAL_BACKEND (+ EVAL_BASE_URL) choose what and how (recipes/paper.yaml, "evaluate");
# arguments are passed on to safe_qaq.evaluate (docs/evaluation.md).
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
if ! is_main_node; then
    echo "node $NODE_RANK: evaluation runs on node 0 only"
    exit 0
fi
plan_of evaluate dataset=dataset eval_argv=evaluate
check_file "${dataset[0]}" "prepare the data first (python -m safe_qaq.prepare; docs/data.md)"
run "$PYTHON" "${eval_argv[@]}" "$@"

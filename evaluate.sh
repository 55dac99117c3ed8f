#!/usr/bin/env bash
# Stage 4: evaluate a stage's merged model on the test split (default: SAFE-LS, stage2_lcrl) with the recipe's
# generation settings -- greedy, with the repetition penalty and completion budget of the GRPO rollouts and
# sample.sh. EVAL_RUN / EVAL_MODEL / EVAL_DATA / EVAL_OUT / EVAL_BACKEND (+ EVAL_BASE_URL) choose what and how;
# arguments are passed on to safe_qaq.evaluate.
source "$(dirname "$0")/scripts/common.sh"
if ! is_main_node; then
    echo "node $NODE_RANK: evaluation runs on node 0 only"
    exit 0
fi
EVAL_RUN="${EVAL_RUN:-$STAGE2_LCRL_DIR}"
EVAL_MODEL="${EVAL_MODEL:-$(merged_dir "$EVAL_RUN")}"
EVAL_DATA="${EVAL_DATA:-$DATA_DIR/offline_test.jsonl}"
EVAL_OUT="${EVAL_OUT:-$OUTPUT_ROOT/eval/$(basename "$EVAL_RUN")}"
EVAL_BACKEND="${EVAL_BACKEND:-$SAMPLE_BACKEND}"
check_file "$EVAL_DATA" "prepare the data first"
eval_args=(--model "$EVAL_MODEL" --backend "$EVAL_BACKEND" --data "$EVAL_DATA" --out "$EVAL_OUT"
           --temperature 0 --top-p 1.0 --top-k -1 --repetition-penalty "$REPETITION_PENALTY"
           --max-tokens "$MAX_COMPLETION_LENGTH" --seed "$SEED")
if [ "$EVAL_BACKEND" = "openai" ]; then
    eval_args+=(--base-url "${EVAL_BASE_URL:?EVAL_BACKEND=openai needs EVAL_BASE_URL, e.g. http://127.0.0.1:8000/v1}")
fi
"$PYTHON" -m safe_qaq.evaluate "${eval_args[@]}" "$@"

#!/usr/bin/env bash
# Stage 2a: rejection sampling -- SAMPLE_N completions per training prompt from the stage-1 model
# (temperature 0.8, top_p 0.95, top_k 50). One shard per GPU when SAMPLE_SHARDS > 1; resumable.
source "$(dirname "$0")/scripts/common.sh"
require_stage "$STAGE1_DIR" "run_swift_grpo_stage1.sh"
SAMPLE_INPUT="${SAMPLE_INPUT:-$DATA_DIR/offline_train.jsonl}"
SAMPLE_SHARDS="${SAMPLE_SHARDS:-1}"
check_file "$SAMPLE_INPUT" "prepare the data first"
mkdir -p "$SAMPLES_DIR"
sample_args=(--model "$(merged_dir "$STAGE1_DIR")" --input "$SAMPLE_INPUT" --backend "$SAMPLE_BACKEND"
             --n "$SAMPLE_N" --temperature "$SAMPLE_TEMPERATURE" --top-p "$SAMPLE_TOP_P" --top-k "$SAMPLE_TOP_K"
             --max-tokens "$MAX_COMPLETION_LENGTH" --num-shards "$SAMPLE_SHARDS")
if [ -n "$SAMPLE_LIMIT" ]; then sample_args+=(--limit "$SAMPLE_LIMIT"); fi
# With several shards each takes its own GPU (SAMPLE_GPUS lists them, default 0..N-1).
gpus=(${SAMPLE_GPUS:-$(seq -s ' ' 0 $((SAMPLE_SHARDS - 1)))})
pids=()
for ((shard = 0; shard < SAMPLE_SHARDS; shard++)); do
    if (( SAMPLE_SHARDS > 1 )); then export CUDA_VISIBLE_DEVICES="${gpus[$shard]}"; fi
    "$PYTHON" -m safe_qaq.sample "${sample_args[@]}" --shard-index "$shard" \
        --output "$SAMPLES_DIR/samples.shard$shard.jsonl" "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"

#!/usr/bin/env bash
# Stage 2a: rejection sampling -- SAMPLE_N completions per training prompt from the stage-1 model
# (temperature 0.8, top_p 0.95, top_k 50). SAMPLE_SHARDS processes (default 1), each on its own GPU; resumable.
source "$(dirname "$0")/scripts/common.sh"
if ! is_main_node; then
    echo "node $NODE_RANK: sampling runs on node 0 only (SAMPLE_SHARDS spreads it over node 0's GPUs)"
    exit 0
fi
require_stage "$STAGE1_DIR" "run_swift_grpo_stage1.sh"
SAMPLE_INPUT="${SAMPLE_INPUT:-$DATA_DIR/offline_train.jsonl}"
SAMPLE_SHARDS="${SAMPLE_SHARDS:-1}"
check_file "$SAMPLE_INPUT" "prepare the data first"
mkdir -p "$SAMPLES_DIR"
# Every generation setting explicit, the same ones evaluate.sh uses where they apply (README, "Sampling").
sample_args=(--model "$(merged_dir "$STAGE1_DIR")" --input "$SAMPLE_INPUT" --backend "$SAMPLE_BACKEND"
             --n "$SAMPLE_N" --temperature "$SAMPLE_TEMPERATURE" --top-p "$SAMPLE_TOP_P" --top-k "$SAMPLE_TOP_K"
             --repetition-penalty "$REPETITION_PENALTY" --max-tokens "$MAX_COMPLETION_LENGTH" --seed "$SEED"
             --num-shards "$SAMPLE_SHARDS")
if [ -n "$SAMPLE_LIMIT" ]; then sample_args+=(--limit "$SAMPLE_LIMIT"); fi
# With several shards each takes its own GPU (SAMPLE_GPUS lists them, default 0..N-1).
gpus=(${SAMPLE_GPUS:-$(seq -s ' ' 0 $((SAMPLE_SHARDS - 1)))})
pids=()
shard_files=()
rm -f "$SAMPLES_DIR/shards.txt"  # rewritten below once every shard of this run is complete
for ((shard = 0; shard < SAMPLE_SHARDS; shard++)); do
    if (( SAMPLE_SHARDS > 1 )); then export CUDA_VISIBLE_DEVICES="${gpus[$shard]}"; fi
    shard_files+=("$SAMPLES_DIR/samples.shard$shard.jsonl")
    "$PYTHON" -m safe_qaq.sample "${sample_args[@]}" --shard-index "$shard" --output "${shard_files[$shard]}" "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
if (( status == 0 )); then
    # The shards of this run, for process_samples.sh: shard files left by a run with another SAMPLE_SHARDS
    # would otherwise add duplicate prompts.
    printf '%s\n' "${shard_files[@]}" > "$SAMPLES_DIR/shards.txt"
fi
exit "$status"

#!/usr/bin/env bash
# Stage 2a: rejection sampling -- SAMPLE_N completions per training prompt from the stage-1 model (temperature 0.8,
# top_p 0.95, top_k 50). SAMPLE_SHARDS processes (default 1), each on its own GPU (SAMPLE_GPUS); resumable.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
if ! is_main_node; then
    echo "node $NODE_RANK: sampling runs on node 0 only (SAMPLE_SHARDS spreads it over node 0's GPUs)"
    exit 0
fi
require_stage stage1 run_swift_grpo_stage1.sh
argv_of dataset sample dataset
check_file "${dataset[0]}" "prepare the data first (python -m safe_qaq.prepare; docs/data.md)"
argv_of gpus sample gpus  # one per shard, or one error line
samples="$(run_dir sample)"
if ! dry_run; then
    mkdir -p "$samples"
    rm -f "$samples/shards.txt" "$samples/source_checkpoint.txt"  # rewritten once every shard of this run is done
fi
pids=()
shard_files=()
for ((shard = 0; shard < SAMPLE_SHARDS; shard++)); do
    argv_of shard_argv sample sample "$shard"
    shard_files+=("$samples/samples.shard$shard.jsonl")
    if (( SAMPLE_SHARDS > 1 )); then
        run env CUDA_VISIBLE_DEVICES="${gpus[$shard]}" "$PYTHON" "${shard_argv[@]}" "$@" &
    else
        run "$PYTHON" "${shard_argv[@]}" "$@" &
    fi
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
if (( status == 0 )) && ! dry_run; then
    # The shards of this run, for process_samples.sh: shard files left by a run with another SAMPLE_SHARDS would
    # otherwise add duplicate prompts.
    printf '%s\n' "${shard_files[@]}" > "$samples/shards.txt"
fi
exit "$status"

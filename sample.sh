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
shard_specs=()
for ((shard = 0; shard < SAMPLE_SHARDS; shard++)); do shard_specs+=("shard_argv_$shard=sample:$shard"); done
plan_of sample dataset=dataset gpus=gpus "${shard_specs[@]}"  # gpus: one per shard, or one error line
check_file "${dataset[0]}" "prepare the data first (python -m safe_qaq.prepare; docs/data.md)"
samples="$(run_dir sample)"
if ! dry_run; then
    mkdir -p "$samples"
    rm -f "$samples/shards.txt" "$samples/source_checkpoint.txt"  # rewritten once every shard of this run is done
fi
pids=()
shard_files=()
for ((shard = 0; shard < SAMPLE_SHARDS; shard++)); do
    declare -n shard_argv="shard_argv_$shard"
    shard_files+=("$samples/samples.shard$shard.jsonl")
    launch=("$PYTHON" "${shard_argv[@]}" "$@")
    unset -n shard_argv
    if (( SAMPLE_SHARDS > 1 )); then launch=(env CUDA_VISIBLE_DEVICES="${gpus[$shard]}" "${launch[@]}"); fi
    if dry_run; then
        run "${launch[@]}"  # printed in shard order
    else
        "${launch[@]}" &
        pids+=($!)
    fi
done
status=0
for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" || status=$?; done
if (( status == 0 )) && ! dry_run; then
    # The shards of this run, for process_samples.sh: shard files left by a run with another SAMPLE_SHARDS would
    # otherwise add duplicate prompts.
    printf '%s\n' "${shard_files[@]}" > "$samples/shards.txt"
fi
exit "$status"

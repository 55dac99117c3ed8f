#!/usr/bin/env bash
# Stage 2a': keep, per prompt, the shortest correct completion (the accuracy reward's notion of "correct");
# prompts with none go to unsolved.jsonl.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
if ! is_main_node; then
    echo "node $NODE_RANK: process_samples runs on node 0 only"
    exit 0
fi
samples="$(run_dir process)"
# The shard files of the last complete sample.sh run (it lists them once every shard has finished).
check_file "$samples/shards.txt" "run sample.sh first (it lists its shard files there when all are complete)"
shards=()
if ! dry_run; then mapfile -t shards < "$samples/shards.txt"; fi
argv_of process_argv process process "${shards[@]}"
run "$PYTHON" "${process_argv[@]}" "$@"
if ! dry_run; then checkpoint_token "$(run_dir stage1)" > "$samples/source_checkpoint.txt"; fi

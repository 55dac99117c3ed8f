#!/usr/bin/env bash
# Stage 2a': keep, per prompt, the shortest correct completion (same notion of "correct" as the
# accuracy reward); prompts with none go to unsolved.jsonl.
source "$(dirname "$0")/scripts/common.sh"
if ! is_main_node; then
    echo "node $NODE_RANK: process_samples runs on node 0 only"
    exit 0
fi
# The shard files of the last complete sample.sh run (it lists them once every shard has finished).
check_file "$SAMPLES_DIR/shards.txt" "run sample.sh first (it lists its shard files there when all are complete)"
mapfile -t shards < "$SAMPLES_DIR/shards.txt"
"$PYTHON" -m safe_qaq.process_samples "${shards[@]}" \
    --output "$SAMPLES_DIR/rsft.jsonl" --unsolved "$SAMPLES_DIR/unsolved.jsonl" "$@"

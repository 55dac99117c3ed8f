#!/usr/bin/env bash
# Stage 2a': keep, per prompt, the shortest correct completion (same notion of "correct" as the
# accuracy reward); prompts with none go to unsolved.jsonl.
source "$(dirname "$0")/scripts/common.sh"
shopt -s nullglob
shards=("$SAMPLES_DIR"/samples.shard*.jsonl)
if [ "${#shards[@]}" -eq 0 ]; then echo "no samples in $SAMPLES_DIR -- run sample.sh first" >&2; exit 1; fi
"$PYTHON" -m safe_qaq.process_samples "${shards[@]}" \
    --output "$SAMPLES_DIR/rsft.jsonl" --unsolved "$SAMPLES_DIR/unsolved.jsonl" "$@"

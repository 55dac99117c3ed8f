#!/usr/bin/env bash
# Stage 2b (SAFE-RS): SFT of the stage-1 model on the shortest correct samples that process_samples.sh kept.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
samples="$(run_dir process)"
if [ -z "${RSFT_DATASET:-}" ]; then
    # process_samples.sh (node 0) writes the token of the stage-1 checkpoint the samples came from, when it is done.
    wait_for_node0 "$samples/rsft.jsonl" "$samples/source_checkpoint.txt" "$(run_dir stage1)"
else
    wait_for_node0 "$RSFT_DATASET"
fi
DATASET_HINT="run sample.sh and process_samples.sh first (or no prompt had a correct sample: see $samples/unsolved.jsonl)"
begin_stage rsft
run "$SWIFT" sft "${TRAIN[@]}" "$@"
merge_stage rsft
say "stage 2 RSFT done: $(run_dir rsft)/merged"

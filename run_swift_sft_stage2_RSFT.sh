#!/usr/bin/env bash
# Stage 2b (SAFE-RS): SFT of the stage-1 model on the kept shortest-correct samples.
source "$(dirname "$0")/scripts/common.sh"
require_stage "$STAGE1_DIR" "run_swift_grpo_stage1.sh"
RSFT_DATASET="${RSFT_DATASET:-$SAMPLES_DIR/rsft.jsonl}"
if [ "$RSFT_DATASET" = "$SAMPLES_DIR/rsft.jsonl" ]; then
    # process_samples.sh (node 0) renames rsft.jsonl, then unsolved.jsonl, into place when it is done.
    wait_for_node0 "$SAMPLES_DIR/unsolved.jsonl" "$(merged_dir "$STAGE1_DIR")/config.json"
else
    wait_for_node0 "$RSFT_DATASET"
fi
if [ ! -s "$RSFT_DATASET" ] && [ "$PROFILE" = "smoke" ]; then
    # A smoke run samples a handful of prompts, and a barely warmed test model may solve none of them; the
    # smoke run then trains on the prepared gold answers to keep the chain going, and says so. Any other
    # profile stops here.
    echo "smoke: $RSFT_DATASET is empty (no sampled prompt was solved); using the gold SFT rows"
    RSFT_DATASET="$DATA_DIR/sft_train.jsonl"
fi
check_file "$RSFT_DATASET" "run sample.sh and process_samples.sh first (or no prompt had a correct sample)"
run_sft "$(merged_dir "$STAGE1_DIR")" "$RSFT_DATASET" "$STAGE2_RSFT_DIR" "$@"
merge_lora "$STAGE2_RSFT_DIR"
echo "stage 2 RSFT done: $(merged_dir "$STAGE2_RSFT_DIR")"

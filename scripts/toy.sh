#!/usr/bin/env bash
# `make toy`: the toy reproduction on CPU. The warm-started tiny model goes through the real stage scripts
# (PROFILE=toy) on the toy calls, each stage's model is measured on train and test, and the paper's claims
# are checked (safe_qaq/toy.py). Writes outputs/toy/report.{json,md} and the curves; about 20 minutes on 2 cores.
# A toy to verify the training machinery, not a fraud detector (README, "The toy reproduction").
# Overridable: STAGE1_STEPS, LCRL_STEPS, STAGE3_STEPS, RSFT_EPOCHS, SAMPLE_LIMIT, OUTPUT_ROOT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x "$ROOT/.venv/bin/python" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
export PROFILE=toy PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs/toy}"
export DATA_DIR="${DATA_DIR:-$ROOT/data/toy/prepared}"
STAGE1_STEPS="${STAGE1_STEPS:-40}"
LCRL_STEPS="${LCRL_STEPS:-60}"
STAGE3_STEPS="${STAGE3_STEPS:-60}"
export SAMPLE_LIMIT="${SAMPLE_LIMIT:-96}"
RSFT_EPOCHS="${RSFT_EPOCHS:-2}"
LOGS="$OUTPUT_ROOT/logs"
rm -rf "$OUTPUT_ROOT"  # the toy's own folder: every run starts from the warm base again
mkdir -p "$LOGS"
toy_start=$(date +%s)

source "$ROOT/scripts/step.sh"
measure() { python -m safe_qaq.toy measure --name "$1" --model "$2" --data "$DATA_DIR" --out "$OUTPUT_ROOT"; }

echo "SAFE-QAQ toy reproduction: the warm-started tiny model on synthetic calls, CPU. It verifies the machinery."
step 0-warm-base python -m safe_qaq.warm_start
step 0-prepare-toy-calls python -m safe_qaq.prepare --input data/toy/rl.jsonl --out "$DATA_DIR" --no-progress
step 0-measure-base measure base "$ROOT/models/tiny-qwen2-audio-warm"
step 1-grpo-stage1 env MAX_STEPS="$STAGE1_STEPS" bash run_swift_grpo_stage1.sh
step 1-measure measure stage1 "$OUTPUT_ROOT/stage1_grpo/merged"
step 2a-sample bash sample.sh
step 2a-process-samples bash process_samples.sh --stats "$OUTPUT_ROOT/stage2_samples/process_stats.json"
step 2b-rsft env NUM_EPOCHS="$RSFT_EPOCHS" bash run_swift_sft_stage2_RSFT.sh
step 2b-measure measure rsft "$OUTPUT_ROOT/stage2_rsft/merged"
step 2c-lcrl env MAX_STEPS="$LCRL_STEPS" bash run_swift_grpo_stage2_LCRL.sh
step 2c-measure measure lcrl "$OUTPUT_ROOT/stage2_lcrl/merged"
step 3-realtime env MAX_STEPS="$STAGE3_STEPS" bash run_swift_grpo_stage3.sh
step 3-measure measure stage3 "$OUTPUT_ROOT/stage3_realtime/merged"
for stage in stage1_grpo stage2_lcrl stage3_realtime; do
    step "4-curves-$stage" python -m safe_qaq.plots curves "$OUTPUT_ROOT/$stage" --out "$OUTPUT_ROOT/${stage}_curves.png"
done
echo
python -m safe_qaq.toy report --out "$OUTPUT_ROOT"
echo "toy reproduction: $(( $(date +%s) - toy_start )) s; report: $OUTPUT_ROOT/report.md, report.json, *_curves.png"

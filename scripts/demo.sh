#!/usr/bin/env bash
# `make demo`: the whole SAFE-QAQ pipeline on CPU -- the warm-started tiny Qwen2-Audio (`make model`) and the
# bundled sample calls, through the same stage scripts (PROFILE=smoke) the GPU recipe uses, a few steps each --
# then what each stage moved (from its training log) and an evaluation of the final model beside the
# transcript floor. Overridable: MODEL, DATA_DIR, OUTPUT_ROOT, MAX_STEPS, SAMPLE_LIMIT, EVAL_LIMIT, LIVE_LIMIT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x "$ROOT/.venv/bin/python" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
export PROFILE=smoke
export MODEL="${MODEL:-$ROOT/data/warm_base/tiny-qwen2-audio-warm}"
export DATA_DIR="${DATA_DIR:-$ROOT/data/prepared}"
export OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs/demo}"
EVAL_LIMIT="${EVAL_LIMIT:-}"
LIVE_LIMIT="${LIVE_LIMIT:-2}"
LOGS="$OUTPUT_ROOT/logs"
rm -rf "$OUTPUT_ROOT"  # the demo's own folder: every run starts from the base model again
mkdir -p "$LOGS"
demo_start=$(date +%s)

source "$ROOT/scripts/step.sh"
STEP_SHOW_LOG=1

echo "SAFE-QAQ demo: the warm-started tiny Qwen2-Audio, bundled calls, CPU. A few steps a stage: the curves move,"
echo "the scores are not a fraud detector's."
if [ "$MODEL" = "$ROOT/data/warm_base/tiny-qwen2-audio-warm" ]; then
    step 0-warm-base python -m safe_qaq.toy.warm_start --check  # the committed base, up to date (`make model`)
fi
step 0-prepare-data python -m safe_qaq.prepare --input data/calls/metadata.jsonl --out "$DATA_DIR"
step 1-grpo-stage1 bash run_swift_grpo_stage1.sh
step 2a-sample bash sample.sh
step 2a-process-samples bash process_samples.sh --stats "$OUTPUT_ROOT/stage2_samples/process_stats.json"
step 2b-rsft bash run_swift_sft_stage2_RSFT.sh
step 2c-lcrl bash run_swift_grpo_stage2_LCRL.sh
step 3-realtime bash run_swift_grpo_stage3.sh

FINAL="$OUTPUT_ROOT/stage3_realtime/merged"
eval_args=(--model "$FINAL" --data "$DATA_DIR/offline_test.jsonl" --out "$OUTPUT_ROOT/eval" --name demo-final
           --max-tokens 96 --overwrite --quiet)
if [ -n "$EVAL_LIMIT" ]; then eval_args+=(--limit "$EVAL_LIMIT"); fi
step 4-evaluate python -m safe_qaq.evaluate "${eval_args[@]}"
step 4-live-calls python -m safe_qaq.live eval --model "$FINAL" --calls "$DATA_DIR/calls_test.jsonl" \
    --out "$OUTPUT_ROOT/live" --limit "$LIVE_LIMIT" --max-rounds 2 --max-tokens 96 --overwrite --quiet \
    --name demo-final
for stage in stage1_grpo stage2_lcrl stage3_realtime; do
    step "4-curves-$stage" python -m safe_qaq.plots curves "$OUTPUT_ROOT/$stage" --out "$OUTPUT_ROOT/${stage}_curves.png"
done

summary_table() { sed '/^$/q' "$1"; }  # the first table of a metrics file (per-class detail follows)
echo
echo "What each stage moved: its target metric over the first and last third of its steps (training logs)"
python -m safe_qaq.plots moves "$OUTPUT_ROOT"
python - "$OUTPUT_ROOT/stage2_samples/process_stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"2a rejection sampling: a correct completion kept for {s['kept']}/{s['prompts']} prompts; mean think "
      f"{s['think_mean_all']:.1f} over all samples -> {s['think_mean_kept'] or 0:.1f} kept")
PY
echo
echo "Offline test split: the final model beside the transcript floor ($OUTPUT_ROOT/eval/metrics.md)"
summary_table "$OUTPUT_ROOT/eval/metrics.md"
echo "Live calls ($OUTPUT_ROOT/live/live_metrics.md)"
summary_table "$OUTPUT_ROOT/live/live_metrics.md"
cat <<EOF
Outputs ($(( $(date +%s) - demo_start )) s in all):
  stage 1 GRPO          $OUTPUT_ROOT/stage1_grpo        (merged: stage1_grpo/merged, curves: stage1_grpo_curves.png)
  stage 2a samples      $OUTPUT_ROOT/stage2_samples     (samples.shard0.jsonl, rsft.jsonl, unsolved.jsonl)
  stage 2b RSFT         $OUTPUT_ROOT/stage2_rsft
  stage 2c LCRL         $OUTPUT_ROOT/stage2_lcrl        (curves: stage2_lcrl_curves.png)
  stage 3 real time     $OUTPUT_ROOT/stage3_realtime    (final model: stage3_realtime/merged, stage3_realtime_curves.png)
  evaluation            $OUTPUT_ROOT/eval               (metrics.md/json, confusion PNGs, predictions.jsonl)
  live calls            $OUTPUT_ROOT/live
EOF

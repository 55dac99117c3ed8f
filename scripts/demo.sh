#!/usr/bin/env bash
# `make demo`: the whole SAFE-QAQ pipeline on CPU -- the shipped warm-started tiny Qwen2-Audio and the bundled sample
# calls, through the same stage scripts the GPU recipe uses (PROFILE=smoke: recipes/smoke.yaml), a few steps each --
# then what each stage moved (from its training log), an evaluation of the final model beside the transcript
# floor, and live calls. Overridable: any recipe setting (MODEL, DATA_DIR, OUTPUT_ROOT, MAX_STEPS, SAMPLE_LIMIT, ...),
# EVAL_LIMIT, LIVE_LIMIT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x "$ROOT/.venv/bin/python" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export PROFILE=smoke PYTHON
EVAL_LIMIT="${EVAL_LIMIT:-}"
LIVE_LIMIT="${LIVE_LIMIT:-2}"
settings="$("$PYTHON" -m safe_qaq.recipe env)" || exit 2  # NAME=value lines, read, never evaluated
recipe_value() { sed -n "s/^$1=//p" <<< "$settings"; }
OUTPUT_ROOT="$(recipe_value OUTPUT_ROOT)"
MODEL="$(recipe_value MODEL)"
DATA_DIR="$(recipe_value DATA_DIR)"
MAX_COMPLETION_LENGTH="$(recipe_value MAX_COMPLETION_LENGTH)"
BUDGET_CACHE="$(recipe_value BUDGET_CACHE)"
if [ ! -s "$MODEL/config.json" ]; then
    echo "no model at $MODEL: the demo starts from the shipped warm base (make model rebuilds it), or set MODEL" >&2
    exit 1
fi
SHIPPED="$("$PYTHON" -c 'from safe_qaq.toy.warm_start import SHIPPED; print(SHIPPED)')"
LOGS="$OUTPUT_ROOT/logs"
rm -rf "$OUTPUT_ROOT"  # the demo's own folder: every run starts from the base model again
mkdir -p "$LOGS"
demo_start=$(date +%s)

source "$ROOT/scripts/step.sh"
STEP_SHOW_LOG=1

echo "SAFE-QAQ demo: the warm-started tiny Qwen2-Audio ($MODEL), bundled calls, CPU. A few steps a stage: the"
echo "curves move, the scores are not a fraud detector's."
if [ "$MODEL" = "$SHIPPED" ]; then
    step 0-warm-base "$PYTHON" -m safe_qaq.toy.warm_start --check  # the shipped base, built by today's code
fi
step 0-prepare-data "$PYTHON" -m safe_qaq.prepare --input data/calls/metadata.jsonl --out "$DATA_DIR" --no-progress
# The token counts of the stages' row sets in one ms-swift load; each stage's budget check then reuses them.
step 0-count-tokens "$PYTHON" -m safe_qaq.budget count --model "$MODEL" --cache-dir "$BUDGET_CACHE" \
    "$DATA_DIR"/{offline_train,sft_train,realtime_train}.jsonl
stages="$("$PYTHON" -m safe_qaq.stages)"  # the registry: key, step, script, kind, run folder
outputs=()
grpo_runs=()
while read -r key name script kind run; do
    case "$kind" in
        evaluate) continue ;;  # the demo evaluates the final model below
        process) step "$name" bash "$script" --stats "$OUTPUT_ROOT/$run/process_stats.json" ;;
        sft)
            if [ ! -s "$OUTPUT_ROOT/stage2_samples/rsft.jsonl" ]; then
                # 8 prompts sampled from a barely trained tiny model may all be unsolved; the demo then trains RSFT
                # on the prepared gold answers to keep the chain going, and says so. The stage script never does.
                export RSFT_DATASET="$DATA_DIR/sft_train.jsonl"
                echo "demo: no sampled prompt was solved; RSFT trains on the gold rows ($RSFT_DATASET)"
            fi
            step "$name" bash "$script"
            ;;
        *) step "$name" bash "$script" ;;
    esac
    outputs+=("$(printf '  %-28s %s' "$name" "$OUTPUT_ROOT/$run")")
    if [ "$key" = realtime ]; then FINAL="$OUTPUT_ROOT/$run/merged"; fi
    if [ "$kind" = grpo ]; then grpo_runs+=("$run"); fi
done <<< "$stages"

eval_args=(--model "$FINAL" --data "$DATA_DIR/offline_test.jsonl" --out "$OUTPUT_ROOT/eval" --name demo-final
           --max-tokens "$MAX_COMPLETION_LENGTH" --overwrite --quiet)
if [ -n "$EVAL_LIMIT" ]; then eval_args+=(--limit "$EVAL_LIMIT"); fi
# The final model's evaluation, its live calls and the curves need only what is done: run together.
step_bg 4-evaluate "$PYTHON" -m safe_qaq.evaluate "${eval_args[@]}"
step_bg 4-live-calls "$PYTHON" -m safe_qaq.live eval --model "$FINAL" --calls "$DATA_DIR/calls_test.jsonl" \
    --out "$OUTPUT_ROOT/live" --limit "$LIVE_LIMIT" --max-rounds 2 --max-tokens "$MAX_COMPLETION_LENGTH" \
    --overwrite --quiet --name demo-final
grpo_dirs=("${grpo_runs[@]/#/$OUTPUT_ROOT/}")
step_bg 4-curves "$PYTHON" -m safe_qaq.plots curves "${grpo_dirs[@]}" --out-dir "$OUTPUT_ROOT"  # one process for all
step_wait

summary_table() { sed '/^$/q' "$1"; }  # the first table of a metrics file (per-class detail follows)
echo
echo "What each stage moved: its target metric over the first and last third of its steps (training logs)"
"$PYTHON" -m safe_qaq.plots moves "$OUTPUT_ROOT"
"$PYTHON" - "$OUTPUT_ROOT/stage2_samples/process_stats.json" <<'PY'
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
echo "Outputs ($(( $(date +%s) - demo_start )) s in all; final model: $FINAL, curves: $OUTPUT_ROOT/*_curves.png):"
printf '%s\n' "${outputs[@]}"
printf '  %-28s %s\n' 4-evaluate "$OUTPUT_ROOT/eval" 4-live-calls "$OUTPUT_ROOT/live"

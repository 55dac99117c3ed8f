#!/usr/bin/env bash
# First run on a GPU machine: the paper recipe (PROFILE=paper) for MAX_STEPS=2 steps per stage, on the GPUs this
# machine has, with any local Qwen2-Audio checkout. Prints, per stage, seconds per step, peak GPU memory and
# rollout tokens/s (scripts/gpu_report.py says exactly what each number is):
#   MODEL=/models/Qwen2-Audio-7B-Instruct bash scripts/gpu_check.sh
# It needs the prepared data (DATA_DIR, default data/prepared) and writes to OUTPUT_ROOT (outputs/gpu_check),
# which it starts afresh. GPUs: all that nvidia-smi lists, or CUDA_VISIBLE_DEVICES. Any recipe variable
# (recipes/paper.yaml, docs/recipe.md) may be set as usual; the ones set here are only defaults for this check.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PROFILE=paper
export MODEL="${MODEL:?set MODEL to a local model checkout (a folder with config.json; MODEL_FAMILY picks the backbone, docs/backbones.md)}"
if [ ! -s "$MODEL/config.json" ]; then
    echo "MODEL=$MODEL has no config.json: point it at a local model checkout" >&2
    exit 2
fi
SMI="${NVIDIA_SMI:-nvidia-smi}"
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    gpus="$(awk -F, '{print NF}' <<< "$CUDA_VISIBLE_DEVICES")"
else
    gpus="$("$SMI" -L 2>/dev/null | grep -c '^GPU ' || true)"
fi
if [ "${gpus:-0}" -lt 1 ]; then
    echo "no GPU found ($SMI -L lists none): this check runs the recipe on GPUs" >&2
    exit 2
fi
export NPROC_PER_NODE="${NPROC_PER_NODE:-$gpus}"
# G = 9 completions per prompt: per-device batch 3 x processes x GRAD_ACC must be a multiple of 9.
export GRAD_ACC="${GRAD_ACC:-$(( NPROC_PER_NODE % 3 == 0 ? 1 : 3 ))}"
export MAX_STEPS="${MAX_STEPS:-2}"
export SAVE_STEPS="${SAVE_STEPS:-$MAX_STEPS}" LOGGING_STEPS="${LOGGING_STEPS:-1}"
export SAMPLE_SHARDS="${SAMPLE_SHARDS:-$NPROC_PER_NODE}" SAMPLE_LIMIT="${SAMPLE_LIMIT:-4}"
export OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs/gpu_check}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
check="$OUTPUT_ROOT/gpu_check"
rm -rf "$OUTPUT_ROOT"
mkdir -p "$check"
echo "gpu_check: $gpus GPU(s), NPROC_PER_NODE=$NPROC_PER_NODE, GRAD_ACC=$GRAD_ACC, MAX_STEPS=$MAX_STEPS, MODEL=$MODEL"

stage() {  # stage NAME COMMAND...: run it, log it, time it, and sample GPU memory while it runs
    local name="$1" start poller status=0
    shift
    "$SMI" --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$check/$name.memory.csv" 2>&1 &
    poller=$!
    start=$(date +%s%N)
    echo "=== $name: $*"
    "$@" > "$check/$name.log" 2>&1 < /dev/null || status=$?
    kill "$poller" 2>/dev/null || true
    wait "$poller" 2>/dev/null || true
    printf '{"stage": "%s", "ms": %d}\n' "$name" "$(( ($(date +%s%N) - start) / 1000000 ))" >> "$check/timings.jsonl"
    if (( status != 0 )); then
        echo "$name failed (exit $status) -- last lines of $check/$name.log:" >&2
        tail -n 40 "$check/$name.log" >&2
        exit "$status"
    fi
}

stages="$("$PYTHON" -m safe_qaq.stages)"  # the registry: key, step, script, kind, run folder
while read -r key step script kind run; do
    if [ "$kind" = sft ] && [ ! -s "$OUTPUT_ROOT/stage2_samples/rsft.jsonl" ]; then
        # Two GRPO steps rarely make a correct answer; the timing only needs rows of the right shape.
        export RSFT_DATASET="${DATA_DIR:-$ROOT/data/prepared}/sft_train.jsonl"
        echo "no sample was correct after $MAX_STEPS steps: RSFT is timed on the gold rows ($RSFT_DATASET)"
    fi
    if [ "$kind" = evaluate ]; then
        stage "$step" bash "$script" --limit "${EVAL_LIMIT:-32}" --quiet
    else
        stage "$step" bash "$script"
    fi
done <<< "$stages"
echo
"$PYTHON" "$ROOT/scripts/gpu_report.py" "$OUTPUT_ROOT"

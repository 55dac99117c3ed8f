# Shared settings of the six SAFE-QAQ stage scripts. Sourced, never run directly.
#
# Every value is an environment variable with a default; set it before calling a stage script:
#   MODEL=/models/Qwen2-Audio-7B-Instruct NPROC_PER_NODE=3 bash run_swift_grpo_stage1.sh
# PROFILE=paper (default) is the published recipe on a GPU node (LoRA r32, vLLM rollouts, ZeRO-2);
# PROFILE=smoke runs every stage on CPU with the tiny local model, bundled data and a few steps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-paper}"
PYTHON="${PYTHON:-python}"
SWIFT="${SWIFT:-swift}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The qwen2_audio generation fix (a registered template) and the reward plugin.
TEMPLATE="${TEMPLATE:-qwen2_audio_expanded}"
TEMPLATE_PLUGIN="$ROOT/safe_qaq/qwen2_audio_template.py"
REWARD_PLUGIN="$ROOT/rewards.py"

DATA_DIR="${DATA_DIR:-$ROOT/data/prepared}"
OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs}"

# --- the recipe (docs/method.md#training-recipe) --------------------------------------------
LORA_RANK="${LORA_RANK:-32}"
LORA_ALPHA="${LORA_ALPHA:-64}"
TARGET_MODULES="${TARGET_MODULES:-q_proj v_proj}"
NUM_GENERATIONS="${NUM_GENERATIONS:-9}"
TEMPERATURE="${TEMPERATURE:-0.9}"
GRPO_LR="${GRPO_LR:-3e-5}"
GRPO_BATCH="${GRPO_BATCH:-3}"
GRAD_ACC="${GRAD_ACC:-8}"
KL_BETA="${KL_BETA:-0.04}"
MAX_COMPLETION_LENGTH="${MAX_COMPLETION_LENGTH:-2048}"
MAX_LENGTH="${MAX_LENGTH:-8192}"
NUM_EPOCHS="${NUM_EPOCHS:-1}"
WARMUP_RATIO="${WARMUP_RATIO:-0.05}"
RSFT_LR="${RSFT_LR:-5e-5}"
RSFT_BATCH="${RSFT_BATCH:-2}"
RSFT_GRAD_ACC="${RSFT_GRAD_ACC:-8}"
SAMPLE_N="${SAMPLE_N:-16}"
SAMPLE_TEMPERATURE="${SAMPLE_TEMPERATURE:-0.8}"
SAMPLE_TOP_P="${SAMPLE_TOP_P:-0.95}"
SAMPLE_TOP_K="${SAMPLE_TOP_K:-50}"
SAVE_STEPS="${SAVE_STEPS:-100}"
LOGGING_STEPS="${LOGGING_STEPS:-5}"

if [ "$PROFILE" = "smoke" ]; then
    MODEL="${MODEL:-$ROOT/models/tiny-qwen2-audio}"
    DTYPE="${DTYPE:-float32}"
    USE_VLLM="${USE_VLLM:-false}"
    DEEPSPEED="${DEEPSPEED:-}"
    MAX_STEPS="${MAX_STEPS:-2}"
    NUM_GENERATIONS=2 GRPO_BATCH=2 GRAD_ACC=1 RSFT_BATCH=2 RSFT_GRAD_ACC=1
    MAX_COMPLETION_LENGTH=32 SAMPLE_N=4 SAVE_STEPS=1 LOGGING_STEPS=1
    SAMPLE_LIMIT="${SAMPLE_LIMIT:-6}"
    SAMPLE_BACKEND="${SAMPLE_BACKEND:-pt}"
    DATALOADER_WORKERS="${DATALOADER_WORKERS:-0}"
elif [ "$PROFILE" = "paper" ]; then
    MODEL="${MODEL:-Qwen/Qwen2-Audio-7B-Instruct}"
    # The recipe's 3 (per device) x 3 (GPUs) x 8 (grad-acc) = 72 completions = 8 groups of 9.
    NPROC_PER_NODE="${NPROC_PER_NODE:-3}"
    DTYPE="${DTYPE:-bfloat16}"
    USE_VLLM="${USE_VLLM:-true}"
    DEEPSPEED="${DEEPSPEED:-zero2}"
    MAX_STEPS="${MAX_STEPS:-}"
    SAMPLE_LIMIT="${SAMPLE_LIMIT:-}"
    SAMPLE_BACKEND="${SAMPLE_BACKEND:-vllm}"
    DATALOADER_WORKERS="${DATALOADER_WORKERS:-4}"
else
    echo "PROFILE must be 'paper' or 'smoke', got '$PROFILE'" >&2
    exit 2
fi
# ms-swift reads these itself to launch torchrun (multi-GPU, multi-node); export what is set.
for var in NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT CUDA_VISIBLE_DEVICES; do
    if [ -n "${!var:-}" ]; then export "${var?}"; fi
done
VLLM_MODE="${VLLM_MODE:-colocate}"  # or 'server' (start `swift rollout` first; README)
VLLM_SERVER_HOST="${VLLM_SERVER_HOST:-127.0.0.1}"
VLLM_SERVER_PORT="${VLLM_SERVER_PORT:-8000}"
VLLM_GPU_MEMORY_UTILIZATION="${VLLM_GPU_MEMORY_UTILIZATION:-0.5}"
VLLM_MAX_MODEL_LEN="${VLLM_MAX_MODEL_LEN:-10240}"

# --- where each stage writes; each stage starts from the previous one's merged model ---------
STAGE1_DIR="$OUTPUT_ROOT/stage1_grpo"
SAMPLES_DIR="$OUTPUT_ROOT/stage2_samples"
STAGE2_RSFT_DIR="$OUTPUT_ROOT/stage2_rsft"
STAGE2_LCRL_DIR="$OUTPUT_ROOT/stage2_lcrl"
STAGE3_DIR="$OUTPUT_ROOT/stage3_realtime"
merged_dir() { echo "$1/merged"; }

# --- shared argument blocks -----------------------------------------------------------------
common_train_args() {
    TRAIN_ARGS=(
        --model_type qwen2_audio --template "$TEMPLATE" --check_model false
        --torch_dtype "$DTYPE" --tuner_type lora --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA"
        --target_modules $TARGET_MODULES --freeze_vit true
        --max_length "$MAX_LENGTH" --num_train_epochs "$NUM_EPOCHS"
        --save_steps "$SAVE_STEPS" --save_total_limit 2 --logging_steps "$LOGGING_STEPS"
        --dataloader_num_workers "$DATALOADER_WORKERS" --add_version false --report_to tensorboard
    )
    if [ -n "$MAX_STEPS" ]; then TRAIN_ARGS+=(--max_steps "$MAX_STEPS"); fi
    if [ -n "$DEEPSPEED" ]; then TRAIN_ARGS+=(--deepspeed "$DEEPSPEED"); fi
    if [ -n "${RESUME_FROM_CHECKPOINT:-}" ]; then TRAIN_ARGS+=(--resume_from_checkpoint "$RESUME_FROM_CHECKPOINT"); fi
}

check_file() {
    if [ ! -s "$1" ]; then
        echo "missing or empty: $1 -- $2" >&2
        exit 1
    fi
}

check_generation_batch() {
    # ms-swift needs per_device_batch * processes * grad_acc to be a multiple of num_generations.
    local procs=$(( ${NPROC_PER_NODE:-1} * ${NNODES:-1} ))
    local total=$(( GRPO_BATCH * procs * GRAD_ACC ))
    if (( total % NUM_GENERATIONS != 0 )); then
        echo "GRPO_BATCH ($GRPO_BATCH) x processes ($procs) x GRAD_ACC ($GRAD_ACC) = $total is not a multiple" \
             "of NUM_GENERATIONS ($NUM_GENERATIONS); the recipe's 3 x 3 x 8 uses 3 training GPUs" >&2
        exit 2
    fi
}

# run_grpo MODEL DATASET OUTPUT_DIR WARMUP_RATIO -- uses REWARD_FUNCS; extra args appended.
run_grpo() {
    local model="$1" dataset="$2" output="$3" warmup="$4"
    shift 4
    check_file "$dataset" "prepare the data first (python -m safe_qaq.prepare; README)"
    check_generation_batch
    common_train_args
    local vllm_args=(--use_vllm "$USE_VLLM")
    if [ "$USE_VLLM" = "true" ]; then
        vllm_args+=(--vllm_mode "$VLLM_MODE")
        if [ "$VLLM_MODE" = "server" ]; then
            vllm_args+=(--vllm_server_host "$VLLM_SERVER_HOST" --vllm_server_port "$VLLM_SERVER_PORT")
        else
            vllm_args+=(--vllm_gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION"
                        --vllm_max_model_len "$VLLM_MAX_MODEL_LEN" --vllm_limit_mm_per_prompt '{"audio": 8}'
                        --sleep_level 1)
        fi
    fi
    echo ">>> GRPO: $model + $dataset -> $output (rewards: $REWARD_FUNCS)"
    "$SWIFT" rlhf --rlhf_type grpo \
        --model "$model" --dataset "$dataset" --output_dir "$output" \
        --external_plugins "$TEMPLATE_PLUGIN" "$REWARD_PLUGIN" --reward_funcs $REWARD_FUNCS \
        --num_generations "$NUM_GENERATIONS" --temperature "$TEMPERATURE" \
        --max_completion_length "$MAX_COMPLETION_LENGTH" --beta "$KL_BETA" \
        --learning_rate "$GRPO_LR" --per_device_train_batch_size "$GRPO_BATCH" \
        --gradient_accumulation_steps "$GRAD_ACC" --warmup_ratio "$warmup" --log_completions true \
        "${TRAIN_ARGS[@]}" "${vllm_args[@]}" "$@"
}

# run_sft MODEL DATASET OUTPUT_DIR -- extra args appended.
run_sft() {
    local model="$1" dataset="$2" output="$3"
    shift 3
    common_train_args
    echo ">>> SFT: $model + $dataset -> $output"
    "$SWIFT" sft --model "$model" --dataset "$dataset" --output_dir "$output" \
        --external_plugins "$TEMPLATE_PLUGIN" \
        --learning_rate "$RSFT_LR" --per_device_train_batch_size "$RSFT_BATCH" \
        --gradient_accumulation_steps "$RSFT_GRAD_ACC" --warmup_ratio "$WARMUP_RATIO" \
        "${TRAIN_ARGS[@]}" "$@"
}

# merge_lora RUN_DIR: folds the run's last LoRA checkpoint into RUN_DIR/merged (the next stage's model).
merge_lora() {
    local run="$1"
    local checkpoint="$run/last-checkpoint"
    check_file "$checkpoint/adapter_config.json" "the training run did not save a LoRA checkpoint"
    echo ">>> merge: $checkpoint -> $(merged_dir "$run")"
    rm -rf "$(merged_dir "$run")"  # derived from the checkpoint; ms-swift refuses to overwrite it
    "$SWIFT" export --adapters "$checkpoint" --merge_lora true --output_dir "$(merged_dir "$run")" \
        --external_plugins "$TEMPLATE_PLUGIN" --template "$TEMPLATE"
}

require_stage() {
    check_file "$(merged_dir "$1")/config.json" "run the previous stage ($2) first"
}

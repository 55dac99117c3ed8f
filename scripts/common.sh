# Shared settings of the SAFE-QAQ stage scripts. Sourced, never run directly.
#
# Every value is an environment variable with a default; set it before calling a stage script:
#   MODEL=/models/Qwen2-Audio-7B-Instruct NPROC_PER_NODE=3 bash run_swift_grpo_stage1.sh
# PROFILE=paper (default) is the published recipe on a GPU node (LoRA r32, vLLM rollouts, ZeRO-2);
# PROFILE=smoke (`make demo`) runs every stage on CPU from the warm-started tiny model on the bundled calls, a few
# steps each; PROFILE=toy (`make toy`) is the CPU learning run on the toy calls (README, "The toy reproduction").
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

# --- profiles: what a profile changes from the recipe below; a variable set in the environment always wins -----
# The warm-started tiny base (`make model`, safe_qaq/warm_start.py): the CPU profiles start from it.
WARM_MODEL="$ROOT/models/tiny-qwen2-audio-warm"
case "$PROFILE" in
    paper)
        : "${MODEL:=Qwen/Qwen2-Audio-7B-Instruct}"
        # The recipe's 3 (per device) x 3 (GPUs) x 8 (grad-acc) = 72 completions = 8 groups of 9.
        : "${NPROC_PER_NODE:=3}" "${DTYPE:=bfloat16}" "${USE_VLLM:=true}" "${DEEPSPEED:=zero2}"
        : "${SAMPLE_BACKEND:=vllm}" "${DATALOADER_WORKERS:=4}"
        ;;
    smoke | toy)
        # CPU, fp32, one process, no vLLM or DeepSpeed, from the committed warm base (safe_qaq/toy/warm_start.py,
        # `make model`): it knows the answer formats and hears part of the toy task.
        : "${MODEL:=$ROOT/data/warm_base/tiny-qwen2-audio-warm}" "${DTYPE:=float32}" "${USE_VLLM:=false}" "${DEEPSPEED=}"
        : "${SAMPLE_BACKEND:=pt}" "${DATALOADER_WORKERS:=0}"
        if [ "$PROFILE" = "smoke" ]; then
            # The demo: a few steps of 2 prompts per stage, 8 prompts sampled. Half the toy's GRPO rate: at 1e-3 two
            # prompts a step are noisy enough to break the final model's answer JSON on the bundled calls.
            : "${GRAD_ACC:=2}" "${MAX_STEPS:=6}" "${SAMPLE_LIMIT:=8}" "${GRPO_LR:=5e-4}"
        else
            # The toy: 4 prompts a step; scripts/toy.sh sets each stage's MAX_STEPS.
            : "${GRAD_ACC:=4}" "${DATA_DIR:=$ROOT/data/toy/prepared}" "${OUTPUT_ROOT:=$ROOT/outputs/toy}"
        fi
        # Full fine-tuning of the language model: LoRA at any rate tried either did not move the 0.2 M-parameter
        # model or collapsed it; full tuning at lr 1e-3 stays stable (KL <= 0.05).
        : "${TUNER:=full}" "${GRPO_LR:=1e-3}" "${RSFT_LR:=5e-4}"
        # Completions think through up to four checklist items before the answer: at most ~80 tokens.
        : "${MAX_COMPLETION_LENGTH:=96}" "${MAX_LENGTH:=4096}" "${LOGGING_STEPS:=1}" "${SAVE_STEPS:=1000}"
        # G = 4 and temperature 1.0: enough spread within a group for a non-zero advantage on a tiny model.
        : "${NUM_GENERATIONS:=4}" "${GRPO_BATCH:=4}" "${TEMPERATURE:=1.0}" "${RSFT_BATCH:=4}" "${RSFT_GRAD_ACC:=4}"
        : "${SAMPLE_N:=8}"
        # The warm base has had SFT, so stage 1 goes without the think-length bonus (the recipe's rule); the toy's
        # thinking is 14-34 estimated tokens, far under S = 200, so LCRL takes the toy-sized penalty (S = 16).
        : "${STAGE1_REWARDS:=adaptive_classification prompt_format}"
        : "${LCRL_REWARDS:=adaptive_classification prompt_format think_length_penalty_toy}"
        ;;
    *)
        echo "PROFILE must be 'paper', 'smoke' or 'toy', got '$PROFILE'" >&2
        exit 2
        ;;
esac
MAX_STEPS="${MAX_STEPS:-}"
SAMPLE_LIMIT="${SAMPLE_LIMIT:-}"
DATA_DIR="${DATA_DIR:-$ROOT/data/prepared}"
OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs}"

# --- the recipe (docs/method.md#training-recipe) --------------------------------------------
# Rewards of each GRPO stage (docs/method.md#rewards): stage 1 adds the think-length bonus because the recipe's
# base model has had no SFT; LCRL adds the length penalty; stage 3 the conversation-stage reward.
STAGE1_REWARDS="${STAGE1_REWARDS:-adaptive_classification prompt_format think_length_reward_300}"
LCRL_REWARDS="${LCRL_REWARDS:-adaptive_classification prompt_format think_length_penalty_200}"
REALTIME_REWARDS="${REALTIME_REWARDS:-adaptive_classification prompt_format stage_classification}"
# lora: LoRA on the language model, merged after each stage; full: every language-model weight trains and the
# checkpoint is itself the next stage's model.
TUNER="${TUNER:-lora}"
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
# Prompt + completion, in tokens: Qwen2-Audio-7B-Instruct has 8192 positions (text_config.max_position_embeddings).
# A training row over it is dropped before launch with a count (safe_qaq.budget), never truncated.
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
# Explicit everywhere generation happens (GRPO rollouts, sampling, evaluation): otherwise each engine falls back
# to the model's generation_config.json, which for Qwen2-Audio-7B-Instruct says repetition_penalty 1.1.
REPETITION_PENALTY="${REPETITION_PENALTY:-1.0}"
GRPO_TOP_P="${GRPO_TOP_P:-1.0}"
GRPO_TOP_K="${GRPO_TOP_K:--1}"
SEED="${SEED:-42}"
SAVE_STEPS="${SAVE_STEPS:-100}"
LOGGING_STEPS="${LOGGING_STEPS:-5}"
# Training rows over MAX_LENGTH (or with too many audios) are dropped with a count; more than this fraction stops.
MAX_DROP_FRACTION="${MAX_DROP_FRACTION:-0.05}"
BUDGET_CACHE="${BUDGET_CACHE:-$OUTPUT_ROOT/.budget_cache}"  # token counts by content, reused by later runs
# The one bound on <audio> entries per row, shared with `prepare` and the inference engines (safe_qaq/audio.py).
MAX_AUDIOS_PER_ROW="$(sed -n 's/^MAX_AUDIOS_PER_ROW = \([0-9][0-9]*\)$/\1/p' "$ROOT/safe_qaq/audio.py")"
if [ -z "$MAX_AUDIOS_PER_ROW" ]; then
    echo "could not read MAX_AUDIOS_PER_ROW from $ROOT/safe_qaq/audio.py" >&2
    exit 2
fi

# ms-swift reads these itself to launch torchrun (multi-GPU, multi-node); export what is set.
for var in NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT CUDA_VISIBLE_DEVICES; do
    if [ -n "${!var:-}" ]; then export "${var?}"; fi
done
VLLM_MODE="${VLLM_MODE:-colocate}"  # or 'server': start scripts/rollout.sh first (README)
VLLM_SERVER_HOST="${VLLM_SERVER_HOST:-127.0.0.1}"
VLLM_SERVER_PORT="${VLLM_SERVER_PORT:-8000}"
VLLM_GPU_MEMORY_UTILIZATION="${VLLM_GPU_MEMORY_UTILIZATION:-0.5}"
VLLM_MAX_MODEL_LEN="${VLLM_MAX_MODEL_LEN:-$MAX_LENGTH}"  # no longer than the model's positions
# Multi-node: ms-swift saves checkpoints on global rank 0 only, so node 0 alone merges, samples and filters;
# other nodes wait up to this long for what node 0 makes (OUTPUT_ROOT must be on a shared filesystem).
NODE_WAIT_SECONDS="${NODE_WAIT_SECONDS:-3600}"

# --- where each stage writes; each stage starts from the previous one's merged model ---------
STAGE1_DIR="$OUTPUT_ROOT/stage1_grpo"
SAMPLES_DIR="$OUTPUT_ROOT/stage2_samples"
STAGE2_RSFT_DIR="$OUTPUT_ROOT/stage2_rsft"
STAGE2_LCRL_DIR="$OUTPUT_ROOT/stage2_lcrl"
STAGE3_DIR="$OUTPUT_ROOT/stage3_realtime"
merged_dir() { echo "$1/merged"; }
# The model each GRPO stage starts from: one definition for the stage scripts and scripts/rollout.sh.
grpo_start_model() {
    case "$1" in
        stage1) echo "${STAGE1_MODEL:-$MODEL}" ;;
        lcrl) merged_dir "$STAGE2_RSFT_DIR" ;;
        realtime) merged_dir "$STAGE2_LCRL_DIR" ;;
        *) echo "unknown GRPO stage '$1': expected stage1, lcrl or realtime" >&2; return 2 ;;
    esac
}

# LoRA on the language model's attention only: a bare `--target_modules q_proj v_proj` also matches the audio
# tower's q/v projections, and `--freeze_vit` only filters `all-linear`. A regex anchored at the language model
# (peft matches it against full module names) keeps the audio tower and the projector frozen.
LORA_TARGET_REGEX="${LORA_TARGET_REGEX:-^language_model\..*\.($(echo $TARGET_MODULES | tr ' ' '|'))\$}"

# --- multi-node -----------------------------------------------------------------------------
is_main_node() { [ "${NODE_RANK:-0}" = "0" ]; }

# wait_for_node0 FILE [NEWER_THAN]: on a node other than 0, wait until node 0 has written FILE (and, when
# NEWER_THAN exists here, until FILE is newer than it: a rerun must not start from the last run's output).
wait_for_node0() {
    local file="$1" newer_than="${2:-}" waited=0
    is_main_node && return 0
    while [ ! -e "$file" ] || { [ -n "$newer_than" ] && [ -e "$newer_than" ] && [ ! "$file" -nt "$newer_than" ]; }; do
        if (( waited >= NODE_WAIT_SECONDS )); then
            echo "node $NODE_RANK: $file did not appear within NODE_WAIT_SECONDS=$NODE_WAIT_SECONDS s;" \
                 "node 0 writes it, so OUTPUT_ROOT must be on a filesystem every node shares" >&2
            exit 1
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# --- shared argument blocks -----------------------------------------------------------------
common_train_args() {
    local tuner_args
    case "$TUNER" in
        lora) tuner_args=(--tuner_type lora --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA"
                          --target_regex "$LORA_TARGET_REGEX") ;;
        full) tuner_args=(--tuner_type full) ;;  # the audio tower and projector stay frozen (--freeze_vit)
        *) echo "TUNER must be lora or full, got '$TUNER'" >&2; exit 2 ;;
    esac
    TRAIN_ARGS=(
        --model_type qwen2_audio --template "$TEMPLATE" --check_model false
        --torch_dtype "$DTYPE" "${tuner_args[@]}" --freeze_vit true --truncation_strategy delete
        --num_train_epochs "$NUM_EPOCHS" --seed "$SEED"
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

# within_budget MODEL DATASET RUN_DIR COMPLETION_TOKENS: prints the path of DATASET's rows that fit MAX_LENGTH
# (prompt + COMPLETION_TOKENS; 0 for SFT rows, whose answer is part of the row) and carry at most
# MAX_AUDIOS_PER_ROW audios. Rows that do not are dropped with a count and listed beside it, never truncated.
within_budget() {
    local model="$1" dataset="$2" run="$3" completion="$4"
    local kept="$run/budget/$(basename "$dataset")"
    "$PYTHON" -m safe_qaq.budget --model "$model" --dataset "$dataset" --out "$kept" \
        --max-length "$MAX_LENGTH" --completion-tokens "$completion" --max-audios "$MAX_AUDIOS_PER_ROW" \
        --vllm-max-model-len "$VLLM_MAX_MODEL_LEN" --max-drop-fraction "$MAX_DROP_FRACTION" \
        --cache-dir "$BUDGET_CACHE" >&2 || exit $?
    echo "$kept"
}

# run_grpo MODEL DATASET OUTPUT_DIR WARMUP_RATIO -- uses REWARD_FUNCS; extra args appended.
run_grpo() {
    local model="$1" dataset="$2" output="$3" warmup="$4"
    shift 4
    check_file "$dataset" "prepare the data first (python -m safe_qaq.prepare; README)"
    check_generation_batch
    dataset="$(within_budget "$model" "$dataset" "$output" "$MAX_COMPLETION_LENGTH")"
    common_train_args
    local vllm_args=(--use_vllm "$USE_VLLM")
    if [ "$USE_VLLM" = "true" ]; then
        vllm_args+=(--vllm_mode "$VLLM_MODE")
        if [ "$VLLM_MODE" = "server" ]; then
            # The server's own limits are set where it starts (scripts/rollout.sh).
            vllm_args+=(--vllm_server_host "$VLLM_SERVER_HOST" --vllm_server_port "$VLLM_SERVER_PORT")
        else
            vllm_args+=(--vllm_gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION"
                        --vllm_max_model_len "$VLLM_MAX_MODEL_LEN"
                        --vllm_limit_mm_per_prompt "{\"audio\": $MAX_AUDIOS_PER_ROW}" --sleep_level 1)
        fi
    fi
    echo ">>> GRPO: $model + $dataset -> $output (rewards: $REWARD_FUNCS)"
    # GRPO applies --max_length to the prompt alone (the completion is appended unchecked), so the prompt gets
    # what the completion leaves of MAX_LENGTH; `delete` drops, never truncates, a prompt over it.
    "$SWIFT" rlhf --rlhf_type grpo \
        --model "$model" --dataset "$dataset" --output_dir "$output" \
        --external_plugins "$TEMPLATE_PLUGIN" "$REWARD_PLUGIN" --reward_funcs $REWARD_FUNCS \
        --num_generations "$NUM_GENERATIONS" --temperature "$TEMPERATURE" --top_p "$GRPO_TOP_P" \
        --top_k "$GRPO_TOP_K" --repetition_penalty "$REPETITION_PENALTY" \
        --max_completion_length "$MAX_COMPLETION_LENGTH" --max_length $((MAX_LENGTH - MAX_COMPLETION_LENGTH)) \
        --beta "$KL_BETA" --learning_rate "$GRPO_LR" --per_device_train_batch_size "$GRPO_BATCH" \
        --gradient_accumulation_steps "$GRAD_ACC" --warmup_ratio "$warmup" --log_completions true \
        "${TRAIN_ARGS[@]}" "${vllm_args[@]}" "$@"
}

# run_sft MODEL DATASET OUTPUT_DIR -- extra args appended.
run_sft() {
    local model="$1" dataset="$2" output="$3"
    shift 3
    dataset="$(within_budget "$model" "$dataset" "$output" 0)"
    common_train_args
    echo ">>> SFT: $model + $dataset -> $output"
    # Loss on the last assistant turn only: the earlier turns of a round-2/3 row are the carried answers of
    # rounds 1-2, made from gold labels by `prepare`, not kept samples (ms-swift's default trains on every turn).
    "$SWIFT" sft --model "$model" --dataset "$dataset" --output_dir "$output" \
        --external_plugins "$TEMPLATE_PLUGIN" --max_length "$MAX_LENGTH" --loss_scale last_round \
        --learning_rate "$RSFT_LR" --per_device_train_batch_size "$RSFT_BATCH" \
        --gradient_accumulation_steps "$RSFT_GRAD_ACC" --warmup_ratio "$WARMUP_RATIO" \
        "${TRAIN_ARGS[@]}" "$@"
}

# checkpoint_marker RUN_DIR: the file every finished checkpoint of the run has (LoRA adapter or full model).
checkpoint_marker() {
    if [ "$TUNER" = "lora" ]; then echo "$1/last-checkpoint/adapter_config.json"; else echo "$1/last-checkpoint/config.json"; fi
}

# merge_lora RUN_DIR: the run's last checkpoint as RUN_DIR/merged (the next stage's model): LoRA folded in by
# `swift export`, a full fine-tuning checkpoint copied without its training state.
# Node 0 only: ms-swift saves checkpoints on global rank 0 alone. The merge goes to a scratch folder that is
# renamed when complete, so another node never loads a half-written model.
merge_lora() {
    local run="$1"
    local checkpoint="$run/last-checkpoint" merged partial
    merged="$(merged_dir "$run")"
    partial="$merged.partial"
    if ! is_main_node; then
        echo "node $NODE_RANK: training done; node 0 merges $checkpoint into $merged"
        return 0
    fi
    rm -rf "$partial"  # left by an interrupted merge; ms-swift refuses an existing output folder
    if [ "$TUNER" = "lora" ]; then
        check_file "$checkpoint/adapter_config.json" "the training run did not save a LoRA checkpoint"
        echo ">>> merge: $checkpoint -> $merged"
        "$SWIFT" export --adapters "$checkpoint" --merge_lora true --output_dir "$partial" \
            --external_plugins "$TEMPLATE_PLUGIN" --template "$TEMPLATE"
    else
        check_file "$checkpoint/config.json" "the training run did not save a full checkpoint"
        echo ">>> copy: $checkpoint -> $merged (full fine-tuning: the checkpoint is the model)"
        # Model files only: optimizer, scheduler and trainer state (pickles among them) stay with the run.
        "$PYTHON" -m safe_qaq.checkpoint "$checkpoint" "$partial"
    fi
    rm -rf "$merged"  # derived from the checkpoint
    mv "$partial" "$merged"
}

# require_stage RUN_DIR SCRIPT: the previous stage's merged model, waited for on nodes other than 0.
require_stage() {
    wait_for_node0 "$(merged_dir "$1")/config.json" "$(checkpoint_marker "$1")"
    check_file "$(merged_dir "$1")/config.json" "run the previous stage ($2) first"
}

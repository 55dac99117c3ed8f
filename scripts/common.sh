# Sourced by the stage scripts, which set `set -euo pipefail` themselves. Every setting and every command comes from
# the recipe: recipes/*.yaml (PROFILE picks the overlay; an environment variable of the same name wins), resolved
# and built by safe_qaq/recipe.py from the stage registry (safe_qaq/stages.py). This file only runs what it builds.
#   python -m safe_qaq.recipe show      # what a run would use, and where each value comes from
#   DRY_RUN=1 bash run_swift_grpo_stage1.sh   # print the exact commands instead of running them

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
SWIFT="${SWIFT:-swift}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The resolved settings as shell variables (NAME=value lines; read, never evaluated).
recipe_settings="$("$PYTHON" -m safe_qaq.recipe env)" || exit 2
while IFS= read -r line; do
    printf -v "${line%%=*}" '%s' "${line#*=}"
done <<< "$recipe_settings"
unset recipe_settings line

# ms-swift reads these itself to launch torchrun (multi-GPU, multi-node); export what is set.
for var in NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT; do
    if [ -n "${!var:-}" ]; then export "${var?}"; fi
done

dry_run() { [ -n "${DRY_RUN:-}" ] && [ "$DRY_RUN" != 0 ]; }

# run COMMAND...: run it, or with DRY_RUN=1 print it (shell-quoted, exactly as it would run).
run() {
    if dry_run; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# say MESSAGE: progress for the log; a comment under DRY_RUN, so what a dry run prints is a runnable script.
say() {
    if dry_run; then echo "# $*"; else echo "$*"; fi
}

# argv_of VAR STAGE PART [EXTRA...]: the recipe's command for STAGE into the array VAR; a refused setting stops here.
argv_of() {
    local var="$1" out
    shift
    out="$(mktemp)"
    if ! "$PYTHON" -m safe_qaq.recipe argv "$@" > "$out"; then
        rm -f "$out"
        exit 2
    fi
    mapfile -d '' -t "$var" < "$out"
    rm -f "$out"
}

# plan_of STAGE VAR=PART[:ARG]...: several of STAGE's commands from one recipe call, each into its array VAR.
plan_of() {
    local key="$1" out spec i=0 n
    local -a parts=() fields=()
    shift
    for spec in "$@"; do parts+=("${spec#*=}"); done
    out="$(mktemp)"
    if ! "$PYTHON" -m safe_qaq.recipe plan "$key" "${parts[@]}" > "$out"; then
        rm -f "$out"
        exit 2
    fi
    mapfile -d '' -t fields < "$out"
    rm -f "$out"
    for spec in "$@"; do
        local -n array="${spec%%=*}"
        n="${fields[i]}"
        array=("${fields[@]:i+1:n}")
        unset -n array
        i=$((i + 1 + n))
    done
}

# run_dir KEY: the stage's run folder (RUN_DIR_<key>, from the recipe's env lines).
run_dir() {
    local var="RUN_DIR_$1"
    echo "${!var:?no stage $1 in the registry (safe_qaq/stages.py)}"
}

check_file() {
    if dry_run; then return 0; fi
    if [ ! -s "$1" ]; then
        echo "missing or empty: $1 -- $2" >&2
        exit 1
    fi
}

# --- multi-node ----------------------------------------------------------------------------------------------------
# ms-swift saves checkpoints on global rank 0 only, so node 0 alone merges, samples and filters; the others wait for
# what node 0 writes (OUTPUT_ROOT on a filesystem every node shares). What they wait for is named by content -- the
# token of the checkpoint it was made from -- never by modification times, which different machines' clocks write.
is_main_node() { [ "${NODE_RANK:-0}" = "0" ]; }

# wait_for_node0 FILE [TOKEN_FILE RUN]: on a node other than 0, until FILE exists (and TOKEN_FILE holds the token of
# RUN's last checkpoint). The token is read again each time: when this node's training ends, rank 0 (on node 0) may
# still be saving that checkpoint, so a token taken once could name a half-written one and never match.
wait_for_node0() {
    local file="$1" token_file="${2:-}" run="${3:-}" waited=0
    if is_main_node || dry_run; then return 0; fi
    while [ ! -e "$file" ] || { [ -n "$token_file" ] && [ "$(cat "$token_file" 2>/dev/null)" != "$(checkpoint_token "$run")" ]; }; do
        if (( waited >= NODE_WAIT_SECONDS )); then
            echo "node $NODE_RANK: $file (of this run) did not appear within NODE_WAIT_SECONDS=$NODE_WAIT_SECONDS s;" \
                 "node 0 writes it, so OUTPUT_ROOT must be on a filesystem every node shares" >&2
            exit 1
        fi
        if (( waited == 0 )); then echo "node $NODE_RANK: waiting for node 0 to write $file"; fi
        sleep "$NODE_POLL_SECONDS"
        waited=$((waited + NODE_POLL_SECONDS))
    done
}

checkpoint_token() { "$PYTHON" -m safe_qaq.recipe token "$1"; }

# require_stage KEY SCRIPT: KEY's merged model, made from KEY's last checkpoint (waited for on nodes other than 0).
require_stage() {
    local run merged
    run="$(run_dir "$1")"
    merged="$run/merged"
    wait_for_node0 "$merged/config.json" "$merged/source_checkpoint.txt" "$run"
    check_file "$merged/config.json" "run the previous stage ($2) first"
}

# --- a training stage ------------------------------------------------------------------------------------------------
# begin_stage KEY: the previous stage's model, then the dataset cut to the budget (rows over MAX_LENGTH or with
# too many audios dropped with a count and listed beside the run, never truncated), then TRAIN: the arguments of
# `swift rlhf` / `swift sft`, and MERGE, what merge_stage runs.
begin_stage() {
    local key="$1" start dataset
    plan_of "$key" start=start dataset=dataset BUDGET=budget TRAIN=train MERGE=merge
    if [ "${#start[@]}" -gt 0 ]; then require_stage "${start[0]}" "${start[1]}"; fi
    check_file "${dataset[0]}" "${DATASET_HINT:-prepare the data first (python -m safe_qaq.prepare; docs/data.md)}"
    run "$PYTHON" "${BUDGET[@]}"
}

# merge_stage KEY: the run's last checkpoint as RUN/merged, the next stage's model -- LoRA folded in by
# `swift export`, a full fine-tuning checkpoint copied without its trainer state. Node 0 only, into a scratch folder
# renamed when complete, so another node never loads a half-written model.
merge_stage() {
    local key="$1" run merged partial
    run="$(run_dir "$key")"
    merged="$run/merged"
    partial="$merged.partial"
    if ! is_main_node; then
        echo "node $NODE_RANK: training done; node 0 merges $run/last-checkpoint into $merged"
        return 0
    fi
    if ! dry_run; then rm -rf "$partial"; fi  # left by an interrupted merge; ms-swift refuses an existing folder
    if [ "$TUNER" = "lora" ]; then
        check_file "$run/last-checkpoint/adapter_config.json" "the training run did not save a LoRA checkpoint"
        say ">>> merge: $run/last-checkpoint -> $merged"
        run "$SWIFT" export "${MERGE[@]}"
    else
        check_file "$run/last-checkpoint/config.json" "the training run did not save a full checkpoint"
        say ">>> copy: $run/last-checkpoint -> $merged (full fine-tuning: the checkpoint is the model)"
        run "$PYTHON" "${MERGE[@]}"
    fi
    if dry_run; then return 0; fi
    checkpoint_token "$run" > "$partial/source_checkpoint.txt"
    rm -rf "$merged"  # derived from the checkpoint
    mv "$partial" "$merged"
}

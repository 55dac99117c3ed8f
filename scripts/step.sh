# step NAME COMMAND...: run COMMAND quietly into $LOGS/NAME.log, print NAME, ok and the seconds it took; on failure
# print the log's last lines and exit. Sourced by scripts/demo.sh and scripts/toy.sh, which set LOGS
# (and STEP_SHOW_LOG=1 to print each log's path).
step_report() {  # NAME STATUS SECONDS
    printf '%-34s' "$1"
    if [ "$2" = 0 ]; then
        printf 'ok  %4ss' "$3"
        if [ -n "${STEP_SHOW_LOG:-}" ]; then printf '  (log: %s)' "$LOGS/$1.log"; fi
        printf '\n'
    else
        echo "FAILED -- last lines of $LOGS/$1.log:"
        tail -n 40 "$LOGS/$1.log"
        return 1
    fi
}

step() {
    local name="$1" start status=0
    shift
    start=$(date +%s)
    "$@" > "$LOGS/$name.log" 2>&1 < /dev/null || status=$?
    step_report "$name" "$status" "$(( $(date +%s) - start ))" || exit 1
}

# step_bg NAME COMMAND...: the same, started in the background; step_wait waits for every started step and reports
# each in the order started (then exits if any failed). For steps that need only what is already done: on two cores,
# two processes that each spend their first ~10 s importing torch and ms-swift overlap well.
STEP_BG=()
step_bg() {
    local name="$1"
    shift
    (
        start=$(date +%s) status=0
        "$@" > "$LOGS/$name.log" 2>&1 < /dev/null || status=$?
        echo "$status $(( $(date +%s) - start ))" > "$LOGS/.$name.status"
    ) &
    STEP_BG+=("$name:$!")
}

step_wait() {
    local entry name failed=0 status seconds
    for entry in "${STEP_BG[@]}"; do
        wait "${entry##*:}" || true
        name="${entry%:*}"
        read -r status seconds < "$LOGS/.$name.status" || { status=1 seconds=0; }
        rm -f "$LOGS/.$name.status"
        step_report "$name" "$status" "$seconds" || failed=1
    done
    STEP_BG=()
    if [ "$failed" != 0 ]; then exit 1; fi
}

# step NAME COMMAND...: run COMMAND quietly into $LOGS/NAME.log, print NAME, ok and the seconds it took; on failure
# print the log's last lines and exit. Sourced by scripts/demo.sh and scripts/toy.sh, which set LOGS
# (and STEP_SHOW_LOG=1 to print each log's path).
step() {
    local name="$1" start
    shift
    start=$(date +%s)
    printf '%-34s' "$name"
    if "$@" > "$LOGS/$name.log" 2>&1 < /dev/null; then
        printf 'ok  %4ss' "$(( $(date +%s) - start ))"
        if [ -n "${STEP_SHOW_LOG:-}" ]; then printf '  (log: %s)' "$LOGS/$name.log"; fi
        printf '\n'
    else
        echo "FAILED -- last lines of $LOGS/$name.log:"
        tail -n 40 "$LOGS/$name.log"
        exit 1
    fi
}

# Sourced by tools/gpu_check.sh and tools/gpu_gan.sh: a script of parts, each under its own time limit, logged to
# $LOG (set it first; /dev/null for none), with a summary at the end. A failing part does not stop the others.
SUMMARY=()
FAILED=0

say() { echo "$@" | tee -a "$LOG"; }

# part NAME SECONDS COMMAND...: run with a time limit, log, record the outcome
part() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("ok      $name (${took}s)")
    else
        [ "$rc" -eq 124 ] && rc="124, timed out"
        SUMMARY+=("FAILED  $name (exit $rc, ${took}s)")
        FAILED=$((FAILED + 1))
    fi
}

# summary TITLE: the parts' outcomes, also in $OUTDIR/summary.txt when OUTDIR is set
summary() {
    say ""
    say "=== summary${1:+ ($1)}"
    for line in "${SUMMARY[@]}"; do
        say "$line"
    done
    if [ -n "${OUTDIR:-}" ]; then
        printf '%s\n' "${SUMMARY[@]}" > "$OUTDIR/summary.txt"
    fi
}

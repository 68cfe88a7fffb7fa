# Shared helpers for scripts/bootstrap, scripts/test and .ci/run. Source it; don't run it.
# Written for bash 3.2 too (macOS /bin/bash): no associative arrays, no ${var,,}, no mapfile.

# shellcheck shell=bash

ISOFEAT_REPO="${ISOFEAT_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
ISOFEAT_VENV="${ISOFEAT_VENV:-$ISOFEAT_REPO/.venv}"

# Milliseconds since the epoch; $EPOCHREALTIME needs bash 5, macOS ships 3.2.
now_ms() {
    if [ -n "${EPOCHREALTIME:-}" ]; then
        local s="${EPOCHREALTIME/[.,]/}"
        printf '%s\n' "$((s / 1000))"
    else
        printf '%s\n' "$(($(date +%s) * 1000))"
    fi
}

# "12.3s" for the time since a now_ms value.
since() {
    local ms=$(($(now_ms) - $1))
    printf '%d.%ds\n' "$((ms / 1000))" "$(((ms % 1000) / 100))"
}

say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    local code="${2:-1}"
    printf 'error: %s\n' "$1" >&2
    exit "$code"
}

have() { command -v "$1" >/dev/null 2>&1; }

# True for CI=true/1/yes (any case), the way CI services set it.
truthy() {
    case "$(printf '%s' "${1:-}" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

# Run a step and report how long it took: step "label" cmd args...
step() {
    local label="$1" t0
    shift
    t0="$(now_ms)"
    "$@"
    say "$label done in $(since "$t0")"
}

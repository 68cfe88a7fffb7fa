#!/usr/bin/env bash
# agent-team: stage the isofeat team of Claude Code subagents and the notification wiring in
# /usr/local/share/isofeat/agent-team, then merge them into the sandbox user's home:
# ~/.claude/agents/*.md, hooks in ~/.claude/settings.json, notify in ~/.codex/config.toml.
# The same merge runs again as the postCreateCommand, for the remote user and for homes whose
# ~/.claude or ~/.codex is a volume. Existing settings are merged, never overwritten. Safe to
# run twice.

AGENTS="${AGENTS:-"all"}"
NOTIFY_HOOKS="${NOTIFYHOOKS:-"true"}"

set -euo pipefail

FEATURE="agent-team"
FEATURE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STAGE=/usr/local/share/isofeat/agent-team
SANDBOX_RECORD=/etc/isofeat/sandbox-user.env
ALL_AGENTS="technical-lead analytics-engineer software-engineer qa-engineer code-reviewer technical-writer senior-devops"

die() { echo "ERROR (${FEATURE}): $*" >&2; exit 1; }
log() { echo "${FEATURE}: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    die "install.sh must run as root. The devcontainer CLI runs Features as root; by hand, use 'docker run -u root ...'."
fi

# --- helpers -------------------------------------------------------------------------------

check_platform() {
    local id="" like=""
    if [ -r /etc/os-release ]; then
        id="$(. /etc/os-release && echo "${ID:-}")"
        like="$(. /etc/os-release && echo "${ID_LIKE:-}")"
    fi
    case " ${id} ${like} " in
        *" debian "* | *" ubuntu "*) ;;
        *) die "unsupported distribution '${id:-unknown}': this Feature needs Debian or Ubuntu (apt, python3). Use a Debian or Ubuntu base image." ;;
    esac
    # Architecture-independent: text files and a standard-library Python script.
}

# The proxy named by egress-proxy's containerEnv exists only at run time; while the image is
# built its name does not resolve. Ignore such a proxy for apt (a build proxy that resolves is kept).
build_network_env() {
    local var url host
    for var in HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy; do
        url="${!var:-}"
        [ -n "$url" ] || continue
        host="${url#*://}"
        host="${host##*@}"
        host="${host%%/*}"
        if [[ "$host" == \[* ]]; then host="${host#[}"; host="${host%%]*}"; else host="${host%%:*}"; fi
        getent hosts "$host" >/dev/null 2>&1 || unset "$var"
    done
}

apt_get_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "installing ${missing[*]} (apt)"
    (
        build_network_env
        apt-get update -qq --error-on=any
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ) || die "apt-get install ${missing[*]} failed (see above)."
}

selected_agents() {
    if [ "$AGENTS" = all ]; then
        echo "$ALL_AGENTS"
        return
    fi
    local out="" name
    IFS=',' read -r -a names <<<"$AGENTS"
    for name in "${names[@]}"; do
        name="$(echo "$name" | tr -d '[:space:]')"
        [ -n "$name" ] || continue
        case " $ALL_AGENTS " in
            *" $name "*) out="$out $name" ;;
            *) die "unknown agent '${name}' in agents. Choose from: ${ALL_AGENTS// /, } (or all)." ;;
        esac
    done
    [ -n "$out" ] || die "agents is empty. Give a comma-separated list, or all."
    echo "${out# }"
}

# The account to install for at build time: the sandbox user, else a non-root remote user.
target_user() {
    local user=""
    if [ -r "$SANDBOX_RECORD" ]; then
        user="$(sed -n 's/^ISOFEAT_USER=\([a-z_][a-z0-9_-]*\)$/\1/p' "$SANDBOX_RECORD" | head -n1)"
    fi
    if [ -z "$user" ] && [ -n "${_REMOTE_USER:-}" ] && [ "${_REMOTE_USER}" != root ]; then
        user="${_REMOTE_USER}"
    fi
    if [ -n "$user" ] && id "$user" >/dev/null 2>&1; then
        echo "$user"
    fi
}

stage() {
    local agents_json name
    [ "$NOTIFY_HOOKS" = true ] || [ "$NOTIFY_HOOKS" = false ] || die "notifyHooks must be true or false, not '${NOTIFY_HOOKS}'."
    agents_json="$(for name in $(selected_agents); do printf '"%s",' "$name"; done)"
    mkdir -p "$STAGE/agents"
    cp "$FEATURE_DIR"/agents/*.md "$STAGE/agents/"
    install -m 0755 "$FEATURE_DIR/apply.py" "$STAGE/apply"
    printf '{"agents": [%s], "notifyHooks": %s}\n' "${agents_json%,}" "$NOTIFY_HOOKS" >"$STAGE/config.json"
    chmod -R a+rX "$STAGE"
}

# --- work ----------------------------------------------------------------------------------

check_platform
if ! command -v python3 >/dev/null; then
    apt_get_install python3
fi
stage
user="$(target_user)"
if [ -n "$user" ]; then
    # As the user, so every file it creates in its home is its own.
    (cd / && runuser -u "$user" -- "$STAGE/apply" --strict) \
        || die "could not merge the agent team into ${user}'s home (see above)."
else
    log "no sandbox user yet; the postCreateCommand installs the team into the remote user's home"
fi
if [ "$NOTIFY_HOOKS" = true ] && ! command -v isofeat >/dev/null; then
    log "note: the hooks call 'isofeat notify send'; add the isofeat Feature to provide it"
fi

# --- cleanup -------------------------------------------------------------------------------
rm -rf /var/lib/apt/lists/*

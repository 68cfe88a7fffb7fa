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
ALL_AGENTS="technical-lead analytics-engineer software-engineer qa-engineer code-reviewer technical-writer senior-devops"

# The helpers the Features share (die, log, require_root, apt_get_install, write_if_changed...):
# a copy of features/lib/common.sh that scripts/sync-feature-lib keeps in vendor/.
# shellcheck source-path=SCRIPTDIR source=vendor/common.sh
. "$FEATURE_DIR/vendor/common.sh"

require_root

# --- helpers -------------------------------------------------------------------------------

check_platform() {
    check_distribution "apt, python3"
    # Architecture-independent: text files and a standard-library Python script.
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
    local user
    user="$(sandbox_user_name)"
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

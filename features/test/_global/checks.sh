#!/bin/bash
# Checks shared by the _global scenarios: all five features, run as the sandbox user.
# Sourced after dev-container-features-test-lib; AGENTS lists the agents the scenario installs.

check "uid 1001" test "$(id -u)" = 1001
check "group dev (2000)" test "$(id -gn):$(id -g)" = dev:2000
check "sudo is absent" bash -c '! command -v sudo'
check "no setuid or setgid file" bash -c '[ -z "$(find / -xdev -type f -perm /6000 2>/dev/null)" ]'
check "writing to /usr fails" bash -c '! touch /usr/isofeat-probe 2>/dev/null'
for agent in ${AGENTS:-claude codex gemini}; do
    check "$agent --version as $(id -un)" "$agent" --version
done
check "isofeat --version" isofeat --version
check "run-claude on the PATH" command -v run-claude
check "ISOFEAT_SANDBOX=1" test "$ISOFEAT_SANDBOX" = 1
check "the agents' prefix (first on root's PATH) is not writable" bash -c '
    for p in /usr/local/share/npm-global /usr/local/share/npm-global/bin /usr/local/share/npm-global/lib/node_modules; do
        ! touch "$p/.isofeat-probe" 2>/dev/null || exit 1; done'
check "agent prefix belongs to root" test "$(stat -c %U:%G:%a /usr/local/share/npm-global/lib/node_modules/@openai/codex)" = root:root:755
check "no folder on root's PATH is writable (isofeat doctor)" bash -c '
    isofeat doctor --json | python3 -c "import json,sys; c={x[\"name\"]: x for x in json.load(sys.stdin)[\"checks\"]}; print(c[\"root-path\"]); sys.exit(not c[\"root-path\"][\"ok\"])"'
check "seven subagents in ~/.claude/agents" test "$(ls ~/.claude/agents/*.md | wc -l)" = 7
check "subagents belong to the user" test "$(stat -c %U ~/.claude/agents/code-reviewer.md)" = "$(id -un)"
check "Claude Code hooks wired" grep -q 'isofeat notify send --from-hook claude' ~/.claude/settings.json
check "Codex notify wired" grep -q '^notify = \["isofeat", "notify", "send", "--from-hook", "codex"\]' ~/.codex/config.toml
# shellcheck disable=SC2154  # http_proxy comes from the image (containerEnv)
check "proxy variables set" test "$HTTPS_PROXY|$http_proxy" = "http://proxy:8888|http://proxy:8888"
check "python takes the proxy from the environment" python3 -c '
import urllib.request as u
assert u.getproxies()["https"] == "http://proxy:8888", u.getproxies()'
# The proxy service does not exist in this test, so npm fails naming it: proof it went there.
check "npm goes through the proxy" bash -c '
    out="$(timeout 60 npm view left-pad version --fetch-retries=0 2>&1)"; echo "$out" | grep -Eq "(ENOTFOUND|EAI_AGAIN) proxy$"'
check "umask 002 in login shells" test "$(bash -lc umask)" = 0002
check "only home, workspace and temp are writable" bash -c '
    out="$(find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /var/tmp \
        -o -path /run/lock -o -path "$HOME" -o -path /workspaces \) \
        -prune -o ! -type l -writable -print 2>/dev/null)"
    [ -z "$out" ] || { echo "writable: $out"; false; }'

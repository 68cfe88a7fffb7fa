#!/bin/bash
# agent-team with two agents and notifyHooks=false, after sandbox-user (remoteUser: claude).
source dev-container-features-test-lib

check "we are claude" test "$(id -un)" = claude
check "only the two chosen agents" test "$(cd ~/.claude/agents && ls *.md | tr '\n' ' ')" = "code-reviewer.md technical-lead.md "
check "agent files belong to the user" test "$(stat -c %U ~/.claude/agents/code-reviewer.md)" = claude
check "no hooks written" bash -c '! test -e ~/.claude/settings.json || ! grep -q "isofeat notify" ~/.claude/settings.json'
check "no codex notify written" bash -c '! test -e ~/.codex/config.toml || ! grep -q "isofeat" ~/.codex/config.toml'

reportResults

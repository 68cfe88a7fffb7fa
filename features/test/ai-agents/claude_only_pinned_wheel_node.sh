#!/bin/bash
# ai-agents: Claude Code only, pinned, Node.js from the PyPI wheel; no sandbox user (root).
source dev-container-features-test-lib

# First, before this script runs npm itself.
check "no npm download cache left in the image" bash -c '! test -e /root/.npm/_cacache'

check "claude is the pinned version" bash -c 'claude --version | grep -q "^2.1.332 "'
check "codex not installed" bash -c '! command -v codex'
check "gemini not installed" bash -c '! command -v gemini'
check "node comes from the wheel" test "$(readlink -f "$(command -v node)")" = /usr/local/lib/isofeat-node/bin/node
check "node is 22 or newer" bash -c '[ "$(node -p "process.versions.node.split(\".\")[0]")" -ge 22 ]'
check "npm runs" npm --version
check "npx runs" npx --version
check "global prefix from containerEnv" test "$NPM_CONFIG_PREFIX" = /usr/local/share/npm-global
check "npm agrees on the prefix" test "$(npm prefix -g)" = /usr/local/share/npm-global
check "prefix is root's and read-only to others" test "$(stat -c '%U:%G %a' /usr/local/share/npm-global)" = "root:root 755"
check "record for isofeat doctor" grep -qx 'NPM_PREFIX=/usr/local/share/npm-global' /etc/isofeat/ai-agents.env

reportResults

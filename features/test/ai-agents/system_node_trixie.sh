#!/bin/bash
# ai-agents on Debian trixie with nodeSource=system: the distribution's Node.js 20 is new enough
# for Codex CLI and Gemini CLI (Claude Code, which needs 22, is off) (root).
source dev-container-features-test-lib

check "node is the distribution's" test "$(readlink -f "$(command -v node)")" = /usr/bin/node
check "no wheel node installed" bash -c '! test -e /usr/local/lib/isofeat-node'
check "codex --version" codex --version
check "gemini --version" gemini --version
check "claude not installed" bash -c '! command -v claude'

reportResults

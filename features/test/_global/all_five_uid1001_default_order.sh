#!/bin/bash
# All five features on a base whose uid 1001 / gid 2000 are taken (node, staff2k), renamed,
# installed in the CLI's default (alphabetical) order: agent-team and ai-agents run before
# sandbox-user exists, so this proves the features do not depend on their order.
source dev-container-features-test-lib
# Only Codex here, to keep CI short: all_five_bookworm runs all three agents.
AGENTS=codex source ./checks.sh
check "claude and gemini were not asked for" bash -c '! command -v claude && ! command -v gemini'
check "uid 1001 is claude, node is gone" bash -c '[ "$(id -un)" = claude ] && ! getent passwd node'
reportResults

#!/bin/bash
# sandbox-user with every option changed, run as that user (remoteUser: agent).
source dev-container-features-test-lib

check "uid 1500" test "$(id -u)" = 1500
check "user agent" test "$(id -un)" = agent
check "group agents, gid 2500" test "$(id -g):$(id -gn)" = "2500:agents"
check "home /home/agent" test "$HOME" = /home/agent
check "keepSetuid kept /usr/bin/passwd" test -u /usr/bin/passwd
check "every other setuid/setgid bit is gone" bash -c '[ "$(find / -xdev -type f -perm /6000 2>/dev/null)" = /usr/bin/passwd ]'
check "workspaceDir /workspace is group-writable" test "$(stat -c '%U:%G %a' /workspace)" = "root:agents 2775"
check "the user can write in /workspace" bash -c 'touch /workspace/probe && rm /workspace/probe'
check "no claude user" bash -c '! getent passwd claude'

reportResults

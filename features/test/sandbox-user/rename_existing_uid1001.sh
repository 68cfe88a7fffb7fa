#!/bin/bash
# Base with user node (uid 1001) and group staff2k (gid 2000); onConflict=rename.
source dev-container-features-test-lib

check "uid 1001 is now claude" test "$(getent passwd 1001 | cut -d: -f1)" = claude
check "we are claude" test "$(id -un):$(id -u)" = claude:1001
check "gid 2000 is now dev" test "$(getent group 2000 | cut -d: -f1)" = dev
check "primary group dev, nothing else" test "$(id -G)" = 2000
check "the node account is gone" bash -c '! getent passwd node'
check "home moved to /home/claude" bash -c 'test -d /home/claude && ! test -e /home/node'
check "home owned by claude" test "$(stat -c '%U:%G' /home/claude)" = claude:dev
check "sudo is absent" bash -c '! command -v sudo'
check "no setuid or setgid file left" bash -c '[ -z "$(find / -xdev -type f -perm /6000 2>/dev/null)" ]'

reportResults

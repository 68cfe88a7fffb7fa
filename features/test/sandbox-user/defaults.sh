#!/bin/bash
# sandbox-user with default options, run as the new user (remoteUser: claude).
source dev-container-features-test-lib

check "runs as uid 1001" test "$(id -u)" = 1001
check "user is claude" test "$(id -un)" = claude
check "primary group dev, gid 2000" test "$(id -g):$(id -gn)" = "2000:dev"
check "no supplementary groups" test "$(id -G)" = 2000
check "sudo is absent" bash -c '! command -v sudo && ! test -e /etc/sudoers'
check "no setuid or setgid file left" bash -c '[ -z "$(find / -xdev -type f -perm /6000 2>/dev/null)" ]'
check "su cannot elevate (not setuid)" bash -c '! test -u "$(readlink -f "$(command -v su)")"'
check "writing to /usr fails" bash -c '! touch /usr/isofeat-probe 2>/dev/null'
check "writing to /etc fails" bash -c '! touch /etc/isofeat-probe 2>/dev/null'
check "home owned by the user, mode 750" test "$(stat -c '%U:%G %a' "$HOME")" = "claude:dev 750"
check "home is writable" bash -c 'touch "$HOME/probe" && rm "$HOME/probe"'
check "agent state folders owned by the user" test "$(stat -c '%U' "$HOME/.claude" "$HOME/.codex" "$HOME/.gemini" | sort -u)" = claude
check "workspace parent is group-writable" test "$(stat -c '%U:%G %a' /workspaces)" = "root:dev 2775"
check "umask 002 in login shells" test "$(bash -lc umask)" = 0002
check "umask 002 in interactive shells" test "$(bash -ic umask 2>/dev/null)" = 0002
check "only home, workspace and temp folders are writable" bash -c '
    out="$(find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /var/tmp \
        -o -path /run/lock -o -path "$HOME" -o -path /workspaces \) -prune -o ! -type l -writable -print 2>/dev/null)"
    [ -z "$out" ] || { echo "writable: $out"; false; }'
check "git trusts the workspace (system config only)" bash -c \
    'git config --system --get-all safe.directory 2>/dev/null | grep -qx /workspaces \
     || grep -qxP "\tdirectory = /workspaces" /etc/gitconfig'
check "the agent cannot write the system git config" bash -c '! test -w /etc/gitconfig'
check "record for the other features" grep -qx 'ISOFEAT_USER=claude' /etc/isofeat/sandbox-user.env

reportResults

#!/bin/bash
# Host keys made per container, the test's public key (REMOTE_AUTHORIZED_KEY, not a secret)
# for the user `remote`, sshd in the background, then the DinD engine as PID 1.
set -euo pipefail
ssh-keygen -A >/dev/null
install -d -m 0700 -o remote -g dev /home/remote/.ssh
printf '%s\n' "${REMOTE_AUTHORIZED_KEY:?the test passes its public key}" \
    >/home/remote/.ssh/authorized_keys
chown remote:dev /home/remote/.ssh/authorized_keys
chmod 0600 /home/remote/.ssh/authorized_keys
install -d -m 0755 /run/sshd
/usr/sbin/sshd -e
exec /usr/local/lib/isofeat/dind-entrypoint "$@"

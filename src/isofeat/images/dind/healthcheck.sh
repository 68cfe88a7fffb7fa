#!/bin/bash
# Healthcheck of the isofeat Docker-in-Docker engine: healthy once the engine answers on its
# socket (the one the sandbox uses) and reports a server version.
#
# Docker runs it as the container's user, root. Root in this container sees an unmasked /proc
# (systempaths=unconfined), and the docker CLI reads $HOME/.docker and talks to a socket that
# the engine's user (and so nested root) can replace: drop to that user before doing anything.
set -euo pipefail
if [[ "$(id -u)" == "0" ]]; then
    exec setpriv --reuid=rootless --regid=dev --init-groups --inh-caps=-all \
        -- env HOME=/home/rootless "$0" "$@"
fi
exec docker --host "unix://${ISOFEAT_DIND_SOCKET:-/run/isofeat/dind/docker.sock}" \
    version --format '{{.Server.Version}}' >/dev/null

#!/bin/bash
# Healthcheck of the isofeat egress proxy: healthy only when tinyproxy answers a request for
# a name no whitelist can allow with 403. That proves the proxy listens AND that its deny path
# is live; a proxy that let the request through would answer 500 (no such host) instead.
# Uses bash's /dev/tcp, so the image needs no curl.
set -euo pipefail

exec 3<>/dev/tcp/127.0.0.1/8888
printf 'GET http://isofeat-healthcheck.invalid/ HTTP/1.0\r\nHost: isofeat-healthcheck.invalid\r\n\r\n' >&3
status=""
IFS= read -r -t 2 status <&3 || true
exec 3<&-
status="${status%$'\r'}"
if [[ "$status" =~ ^HTTP/1\.[01]\ 403(\ |$) ]]; then
    exit 0
fi
printf 'isofeat-proxy healthcheck: expected a 403 for a denied name, got: %s\n' "${status:-no answer}" >&2
exit 1

#!/bin/bash
# Healthcheck of the isofeat credential broker: healthy only when the addon refuses a CONNECT
# to a host no binding names (403). A broker without its addon would try to connect instead.
set -euo pipefail

exec 3<>/dev/tcp/127.0.0.1/8080
printf 'CONNECT isofeat-healthcheck.invalid:443 HTTP/1.1\r\nHost: isofeat-healthcheck.invalid:443\r\n\r\n' >&3
status=""
IFS= read -r -t 2 status <&3 || true
exec 3<&-
status="${status%$'\r'}"
if [[ "$status" =~ ^HTTP/1\.[01]\ 403(\ |$) ]]; then
    exit 0
fi
printf 'isofeat-broker healthcheck: expected 403 for an unbound host, got: %s\n' "${status:-no answer}" >&2
exit 1

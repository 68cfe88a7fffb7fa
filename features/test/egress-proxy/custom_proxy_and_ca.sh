#!/bin/bash
# egress-proxy with a custom proxy, NO_PROXY and an extra CA given as base64 (root).
source dev-container-features-test-lib

CA=/usr/local/share/ca-certificates/isofeat-egress/c7b0cac700d0ccbd.crt
check "login shells get the chosen proxy" test "$(bash -lc 'echo $HTTPS_PROXY $http_proxy')" = "http://squid.corp.example:3128 http://squid.corp.example:3128"
check "login shells get the chosen NO_PROXY" test "$(bash -lc 'echo $no_proxy')" = "localhost,127.0.0.1,::1,.internal.example"
check "interactive shells get the chosen proxy" test "$(bash -ic 'echo $HTTPS_PROXY' 2>/dev/null)" = http://squid.corp.example:3128
check "/etc/environment has it" grep -qx 'https_proxy=http://squid.corp.example:3128' /etc/environment
# devcontainer exec (which runs this script) starts processes with the login shell's
# environment, so the chosen value wins there; the container's own environment (PID 1, plain
# docker exec) keeps containerEnv's default, as NOTES.md documents.
check "devcontainer exec gets the chosen proxy" test "$HTTPS_PROXY" = http://squid.corp.example:3128
check "containerEnv (PID 1) keeps the default" grep -qx 'HTTPS_PROXY=http://proxy:8888' <(tr '\0' '\n' </proc/1/environ)
check "extra CA installed, named by fingerprint" test -s "$CA"
check "extra CA is in the system store" openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt "$CA"
check "extra CA is in /etc/isofeat/ca-bundle.pem" openssl verify -CAfile /etc/isofeat/ca-bundle.pem "$CA"
check "apt helper names the chosen proxy" grep -q "squid.corp.example" /usr/local/lib/isofeat/apt-proxy-detect

reportResults

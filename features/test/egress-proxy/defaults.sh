#!/bin/bash
# egress-proxy with default options (root).
source dev-container-features-test-lib

for v in HTTP_PROXY HTTPS_PROXY http_proxy https_proxy; do
    check "$v is the proxy service" test "${!v}" = http://proxy:8888
done
# shellcheck disable=SC2154  # no_proxy comes from the image (containerEnv)
check "NO_PROXY (both cases)" test "$NO_PROXY|$no_proxy" = "localhost,127.0.0.1,::1|localhost,127.0.0.1,::1"
check "login shells agree" test "$(bash -lc 'echo $https_proxy')" = http://proxy:8888
check "/etc/environment (pam_env)" grep -qx 'HTTPS_PROXY=http://proxy:8888' /etc/environment
check "machine-readable copy" grep -qx 'HTTP_PROXY=http://proxy:8888' /etc/isofeat/proxy.env
check "apt uses the auto-detect helper" grep -q 'Proxy-Auto-Detect "/usr/local/lib/isofeat/apt-proxy-detect"' /etc/apt/apt.conf.d/95isofeat-proxy
check "apt goes direct where the proxy does not resolve (image builds)" test "$(/usr/local/lib/isofeat/apt-proxy-detect)" = DIRECT
check "CA bundle exists and is what the variables name" bash -c 'test -s /etc/isofeat/ca-bundle.pem && test "$SSL_CERT_FILE|$REQUESTS_CA_BUNDLE|$PIP_CERT|$NODE_EXTRA_CA_CERTS" = "/etc/isofeat/ca-bundle.pem|/etc/isofeat/ca-bundle.pem|/etc/isofeat/ca-bundle.pem|/etc/isofeat/ca-bundle.pem"'
check "the base image's bundle was kept (system store is a subset)" bash -c '
    [ "$(grep -c "BEGIN CERT" /etc/isofeat/ca-bundle.pem)" -ge "$(grep -c "BEGIN CERT" /etc/ssl/certs/ca-certificates.crt)" ]'

reportResults

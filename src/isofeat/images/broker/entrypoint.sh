#!/bin/bash
# Entrypoint of the isofeat credential broker: start mitmdump with the substitution addon
# only on a complete configuration (fail closed: without it the bound hosts are unreachable,
# never reached without the broker).
#
# /etc/isofeat/broker/ (read-only, rendered by `isofeat init`):
#   bindings.json   the bindings, with the real values (0600, this uid's)
#   ca.pem          the environment's CA: private key and certificate (0600, this uid's)
#   upstream-ca.pem optional: extra CAs to trust for the bound hosts' real servers
set -euo pipefail

readonly CONF_DIR=/etc/isofeat/broker
readonly EX_CONFIG=78

refuse() {
    printf 'isofeat-broker: refusing to start: %s\n' "$1" >&2
    printf 'isofeat-broker: fix: %s\n' "$2" >&2
    exit "$EX_CONFIG"
}

for name in bindings.json ca.pem; do
    if [[ ! -r "$CONF_DIR/$name" ]]; then
        refuse "$CONF_DIR/$name is missing or not readable by uid $(id -u)" \
            "run \`isofeat init\` in the project (it renders the broker's folder) and mount it at $CONF_DIR/"
    fi
done

# mitmproxy writes its DH parameters next to the CA: a private copy on the tmpfs.
umask 077
work="$(mktemp -d /tmp/isofeat-broker.XXXXXX)"
cp "$CONF_DIR/ca.pem" "$work/mitmproxy-ca.pem"
# The real servers are checked against the base image's bundle (the machine's extra CAs
# included), plus the optional extra upstream CAs.
cat /etc/isofeat/ca-bundle.pem > "$work/upstream-ca.pem"
if [[ -r "$CONF_DIR/upstream-ca.pem" ]]; then
    cat "$CONF_DIR/upstream-ca.pem" >> "$work/upstream-ca.pem"
fi

printf 'isofeat-broker: starting mitmdump %s\n' "$(/opt/mitmproxy/bin/mitmdump --version 2>/dev/null | head -n1)" >&2
# connection_strategy=lazy: nothing connects upstream before the addon accepted the request.
# stream_large_bodies: big downloads are relayed as they arrive, scrubbed chunk by chunk.
# onboarding=false: no mitm.it pages; the addon decides every request.
exec /opt/mitmproxy/bin/mitmdump \
    --mode regular@8080 \
    --listen-host 0.0.0.0 \
    --set confdir="$work" \
    --set connection_strategy=lazy \
    --set ssl_verify_upstream_trusted_ca="$work/upstream-ca.pem" \
    --set stream_large_bodies=1m \
    --set http2=true \
    --set flow_detail=0 \
    --set onboarding=false \
    --set termlog_verbosity=warn \
    --set isofeat_bindings="$CONF_DIR/bindings.json" \
    -s /usr/local/lib/isofeat/broker_addon.py

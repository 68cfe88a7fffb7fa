#!/usr/bin/env bash
# egress-proxy: point every tool in the image at the egress proxy and trust extra CA certificates.
#  - HTTP_PROXY/HTTPS_PROXY/NO_PROXY (both cases) come from containerEnv with the default values;
#    the chosen values are also written to /etc/environment, /etc/profile.d and /etc/bash.bashrc,
#    which the devcontainer CLI and IDEs read through the login shell, so non-default options win
#    for every process they start.
#  - apt gets its own setting, in auto-detect form: the proxy is used when its name resolves (in
#    the sandbox) and not while images are built, where it does not exist.
#  - curl, pip, npm and git read the environment variables, so they get no second copy that
#    could disagree with them.
#  - CA certificates from the Feature's certs/ folder, caCertsBase64 and caCertsPath are added
#    to the system store and to /etc/isofeat/ca-bundle.pem (kept from the base image if there).
# Safe to run twice.

PROXY_URL="${PROXYURL:-"http://proxy:8888"}"
NO_PROXY_LIST="${NOPROXY:-"localhost,127.0.0.1,::1"}"
CA_CERTS_BASE64="${CACERTSBASE64:-""}"
CA_CERTS_PATH="${CACERTSPATH:-""}"

set -euo pipefail

FEATURE="egress-proxy"
FEATURE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEFAULT_PROXY_URL="http://proxy:8888"
DEFAULT_NO_PROXY="localhost,127.0.0.1,::1"
BUNDLE=/etc/isofeat/ca-bundle.pem
LOCAL_CA_DIR=/usr/local/share/ca-certificates/isofeat-egress
BEGIN="# >>> isofeat egress-proxy >>>"
END="# <<< isofeat egress-proxy <<<"

# The helpers the Features share (die, log, require_root, apt_get_install, write_if_changed...):
# a copy of features/lib/common.sh that scripts/sync-feature-lib keeps in vendor/.
# shellcheck source-path=SCRIPTDIR source=vendor/common.sh
. "$FEATURE_DIR/vendor/common.sh"

require_root

# --- helpers -------------------------------------------------------------------------------

check_platform() {
    check_distribution "apt, update-ca-certificates"
    # Architecture-independent: it writes configuration files only.
}

# Put BODY between our markers in FILE: in place when the block is there, else at the end.
# Every other line stays as it was.
set_block() {
    local file="$1" body="$2" current="" new
    [ -f "$file" ] && current="$(cat "$file")"
    local block="${BEGIN}
${body}
${END}"
    if printf '%s\n' "$current" | grep -qxF -- "$BEGIN"; then
        new="$(printf '%s\n' "$current" | BLOCK="$block" awk -v b="$BEGIN" -v e="$END" '
            $0 == b {print ENVIRON["BLOCK"]; skip = 1; next}
            $0 == e {skip = 0; next}
            !skip {print}')"
    elif [ -n "$current" ]; then
        new="${current}
${block}"
    else
        new="$block"
    fi
    write_if_changed "$file" "$new" 0644
}

validate_options() {
    # Values end up in shell, apt and INI files: allow only characters that are inert in all three.
    local url_re='^(http|https|socks5|socks5h)://([A-Za-z0-9._~%-]+(:[A-Za-z0-9._~%-]*)?@)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$'
    local no_proxy_re='^[][A-Za-z0-9.,:*/_-]*$'
    [[ "$PROXY_URL" =~ $url_re ]] \
        || die "proxyUrl '${PROXY_URL}' is not a proxy URL like http://proxy:8888 (scheme http, https, socks5 or socks5h; host; optional port; no path)."
    [[ "$NO_PROXY_LIST" =~ $no_proxy_re ]] \
        || die "noProxy '${NO_PROXY_LIST}' may hold host names, IP addresses, CIDRs and commas only (no spaces)."
    [[ "$CA_CERTS_BASE64" =~ ^[A-Za-z0-9+/=[:space:]]*$ ]] \
        || die "caCertsBase64 is not base64. Encode the PEM file with: base64 -w0 ca.pem"
    if [ -n "$CA_CERTS_PATH" ] && [ ! -e "$CA_CERTS_PATH" ]; then
        die "caCertsPath '${CA_CERTS_PATH}' does not exist in the image. COPY the certificates in first, or use caCertsBase64."
    fi
}

# Split PEM text on stdin into one file per certificate in DIR (cert-N.pem).
split_pem() {
    awk -v dir="$1" -v start="$2" '
        /-----BEGIN CERTIFICATE-----/ {n++; out = sprintf("%s/cert-%d-%04d.pem", dir, start, n); inside = 1}
        inside {print > out}
        /-----END CERTIFICATE-----/ {inside = 0; close(out)}'
}

collect_certs() {
    local work="$1" f i=0
    # 1. the Feature's own certs/ folder (for a vendored copy of the Feature)
    # 2. caCertsPath inside the image, 3. caCertsBase64
    local sources=()
    if [ -d "$FEATURE_DIR/certs" ]; then
        while IFS= read -r f; do sources+=("$f"); done < <(find "$FEATURE_DIR/certs" -maxdepth 1 -type f \( -name '*.crt' -o -name '*.pem' \) | sort)
    fi
    if [ -n "$CA_CERTS_PATH" ]; then
        if [ -d "$CA_CERTS_PATH" ]; then
            while IFS= read -r f; do sources+=("$f"); done < <(find "$CA_CERTS_PATH" -maxdepth 1 -type f \( -name '*.crt' -o -name '*.pem' \) | sort)
        else
            sources+=("$CA_CERTS_PATH")
        fi
    fi
    for f in "${sources[@]}"; do
        i=$((i + 1))
        split_pem "$work" "$i" <"$f"
    done
    if [ -n "$CA_CERTS_BASE64" ]; then
        i=$((i + 1))
        printf '%s' "$CA_CERTS_BASE64" | tr -d '[:space:]' | base64 -d 2>/dev/null | split_pem "$work" "$i" \
            || die "caCertsBase64 does not decode. Encode the PEM file with: base64 -w0 ca.pem"
    fi
}

install_certs() {
    local work n=0 f fp
    work="$(mktemp -d)"
    collect_certs "$work"
    local found
    found="$(find "$work" -type f | wc -l)"
    if [ "$found" -gt 0 ] || [ ! -f "$BUNDLE" ]; then
        apt_get_install ca-certificates openssl
    fi
    mkdir -p "$LOCAL_CA_DIR"
    local changed=0
    for f in "$work"/*.pem; do
        [ -e "$f" ] || continue
        fp="$(openssl x509 -in "$f" -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 | tr -d ':' | tr 'A-F' 'a-f')" \
            || die "$(basename "$f") from the extra CA certificates is not a valid PEM certificate."
        [ -n "$fp" ] || die "an extra CA certificate is not a valid PEM certificate."
        # Named by fingerprint: the same certificate installed twice is one file.
        if [ ! -f "$LOCAL_CA_DIR/${fp:0:16}.crt" ]; then
            cp "$f" "$LOCAL_CA_DIR/${fp:0:16}.crt"
            chmod 0644 "$LOCAL_CA_DIR/${fp:0:16}.crt"
            changed=1
        fi
        n=$((n + 1))
    done
    rm -rf "$work"
    if [ "$changed" = 1 ] || [ ! -f "$BUNDLE" ]; then
        local out
        # update-ca-certificates' rehash warns about bundles in /etc/ssl/certs; show it only on failure.
        out="$(update-ca-certificates 2>&1)" || { printf '%s\n' "$out" >&2; die "update-ca-certificates failed."; }
    fi
    # /etc/isofeat/ca-bundle.pem: the base image's bundle (if any) plus the system store, one copy
    # of each certificate. Reinstalling ca-certificates later rewrites the system store but not
    # this file, which is why SSL_CERT_FILE and friends point here.
    local merged
    merged="$(mktemp)"
    {
        [ -f "$BUNDLE" ] && cat "$BUNDLE"
        [ -f /etc/ssl/certs/ca-certificates.crt ] && cat /etc/ssl/certs/ca-certificates.crt
    } | awk '
        /-----BEGIN CERTIFICATE-----/ {block = ""; inside = 1}
        inside {block = block $0 "\n"}
        /-----END CERTIFICATE-----/ {inside = 0; if (!(block in seen)) {seen[block] = 1; printf "%s", block}}' >"$merged"
    [ -s "$merged" ] || die "no CA certificates at all: ${BUNDLE} and /etc/ssl/certs/ca-certificates.crt are empty."
    mkdir -p "$(dirname "$BUNDLE")"
    if [ ! -f "$BUNDLE" ] || ! cmp -s "$merged" "$BUNDLE"; then
        install -m 0644 "$merged" "$BUNDLE"
        log "wrote ${BUNDLE} ($(grep -c 'BEGIN CERTIFICATE' "$BUNDLE") certificates)"
    fi
    rm -f "$merged"
    [ "$n" -eq 0 ] || log "trusting ${n} extra CA certificate(s)"
}

write_proxy_env() {
    local lines
    lines="HTTP_PROXY=${PROXY_URL}
HTTPS_PROXY=${PROXY_URL}
NO_PROXY=${NO_PROXY_LIST}
http_proxy=${PROXY_URL}
https_proxy=${PROXY_URL}
no_proxy=${NO_PROXY_LIST}"
    # pam_env (login, su) reads /etc/environment.
    set_block /etc/environment "$lines"
    # Login shells; the devcontainer CLI, VS Code and JetBrains probe the login shell's
    # environment and give it to every process they start, so these values beat containerEnv.
    write_if_changed /etc/profile.d/isofeat-proxy.sh "# isofeat egress-proxy: the sandbox's egress proxy
$(printf '%s\n' "$lines" | sed "s/^\([A-Za-z_]*\)=\(.*\)$/export \1='\2'/")" 0644
    # Interactive non-login shells (docker exec -it ... bash).
    if [ -f /etc/bash.bashrc ]; then
        set_block /etc/bash.bashrc "[ -r /etc/profile.d/isofeat-proxy.sh ] && . /etc/profile.d/isofeat-proxy.sh"
    fi
    # A machine-readable copy for isofeat doctor and scripts.
    write_if_changed /etc/isofeat/proxy.env "# isofeat egress-proxy: values chosen when the image was built
${lines}" 0644
}

write_apt_proxy() {
    local helper=/usr/local/lib/isofeat/apt-proxy-detect
    write_if_changed "$helper" "#!/bin/sh
# isofeat egress-proxy: apt's Proxy-Auto-Detect helper. Prints the proxy when its name resolves
# (inside the sandbox) and DIRECT otherwise (while an image is built, where it does not exist).
if getent hosts '$(proxy_host)' >/dev/null 2>&1; then echo '${PROXY_URL}'; else echo DIRECT; fi" 0755
    write_if_changed /etc/apt/apt.conf.d/95isofeat-proxy "// isofeat egress-proxy (see ${helper})
Acquire::http::Proxy-Auto-Detect \"${helper}\";
Acquire::https::Proxy-Auto-Detect \"${helper}\";" 0644
}

proxy_host() {
    local host="${PROXY_URL#*://}"
    host="${host##*@}"
    host="${host%%/*}"
    if [[ "$host" == \[* ]]; then host="${host#[}"; host="${host%%]*}"; else host="${host%%:*}"; fi
    printf '%s' "$host"
}

# --- work ----------------------------------------------------------------------------------

check_platform
validate_options
install_certs
write_proxy_env
write_apt_proxy

if [ "$PROXY_URL" != "$DEFAULT_PROXY_URL" ] || [ "$NO_PROXY_LIST" != "$DEFAULT_NO_PROXY" ]; then
    log "note: containerEnv still holds the defaults (${DEFAULT_PROXY_URL}); login shells and the"
    log "      devcontainer CLI/IDEs get ${PROXY_URL}. For plain 'docker exec', also set"
    log "      HTTP_PROXY/HTTPS_PROXY/NO_PROXY (both cases) in devcontainer.json containerEnv."
fi
log "proxy ${PROXY_URL}, no proxy for ${NO_PROXY_LIST}, CA bundle ${BUNDLE}"

# --- cleanup -------------------------------------------------------------------------------
rm -rf /var/lib/apt/lists/*

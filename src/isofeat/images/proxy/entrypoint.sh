#!/bin/bash
# Entrypoint of the isofeat egress proxy: start tinyproxy only on a configuration that
# denies by default (fail closed).
#
# Usage (inside the container):
#   proxy-entrypoint            check the config, then exec tinyproxy in the foreground
#   proxy-entrypoint --check    check the config only
#   proxy-entrypoint --reload   check the config, then make the running tinyproxy re-read it
#                               and the filter (SIGUSR1; SIGHUP does NOT reload: as PID 1 it is
#                               ignored, and outside a container it kills tinyproxy -d)
#
# Refuses (exit 78; for --reload the running proxy keeps its old rules; message on stderr, which reaches `docker logs`) when:
#   - /etc/isofeat/proxy/tinyproxy.conf is missing or unreadable;
#   - the conf does not say, as its last word on each, `FilterDefaultDeny Yes`,
#     `FilterType ere` (lowercase: 1.11.1 reads `ERE` as BRE), `FilterURLs On` and
#     `Filter "/etc/isofeat/proxy/filter"`, or uses the deprecated `FilterExtended`;
#   - the filter file is missing, unreadable or holds no rule line;
#   - a filter line is longer than 511 bytes (tinyproxy 1.11.1 reads lines with a 512-byte
#     fgets buffer and silently turns the rest of a longer line into a rule of its own,
#     unanchored) or a rule is not a valid POSIX ERE (tinyproxy would exit on it).
set -euo pipefail
# Byte semantics for ${#line}, like tinyproxy's C parser.
export LC_ALL=C

readonly CONF_DIR=/etc/isofeat/proxy
readonly CONF="$CONF_DIR/tinyproxy.conf"
readonly FILTER="$CONF_DIR/filter"
readonly EX_CONFIG=78

MODE="${1:-}"
case "$MODE" in
    "") ACTION="start" ;;
    --check) ACTION="accept the config" ;;
    --reload) ACTION="reload" ;;
    *)
        printf 'usage: %s [--check | --reload]\n' "$0" >&2
        exit 64
        ;;
esac

refuse() {
    printf 'isofeat-proxy: refusing to %s: %s\n' "$ACTION" "$1" >&2
    printf 'isofeat-proxy: fix: %s\n' "$2" >&2
    exit "$EX_CONFIG"
}

trim() {
    local s="$1"
    s="${s#"${s%%[![:space:]]*}"}"
    s="${s%"${s##*[![:space:]]}"}"
    printf '%s' "$s"
}

readable_file() {
    local path="$1" what="$2"
    if [[ ! -e "$path" ]]; then
        refuse "$what $path is missing" \
            "render it with 'isofeat proxy render --out DIR' and mount DIR read-only at $CONF_DIR/"
    fi
    if [[ ! -f "$path" ]]; then
        refuse "$what $path is not a regular file" "mount the rendered folder at $CONF_DIR/"
    fi
    if [[ ! -r "$path" ]]; then
        refuse "$what $path is not readable by uid $(id -u)" \
            "make the rendered folder world-readable (chmod 0755 DIR; chmod 0644 DIR/*)"
    fi
}

readable_file "$CONF" "config"

# tinyproxy reads directive names case-insensitively and the last occurrence wins, so
# look at every line, not just the first match.
deny="" filter_type="" filter_urls="" filter_path="" filter_lines=0 line_no=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line_no=$((line_no + 1))
    line="$(trim "${line%$'\r'}")"
    [[ -z "$line" || "$line" == \#* ]] && continue
    key="${line%%[[:space:]]*}"
    value="$(trim "${line:${#key}}")"
    case "${key,,}" in
        filterdefaultdeny) deny="$value" ;;
        filtertype) filter_type="$value" ;;
        filterurls) filter_urls="$value" ;;
        filter)
            filter_path="$value"
            filter_lines=$((filter_lines + 1))
            ;;
        filterextended)
            refuse "$CONF:$line_no uses the deprecated FilterExtended" \
                "remove it; the conf must say 'FilterType ere'"
            ;;
    esac
done <"$CONF"

case "${deny,,}" in
    yes | on) ;;
    *) refuse "$CONF does not deny by default (FilterDefaultDeny is '${deny:-unset}')" \
        "the conf must say 'FilterDefaultDeny Yes'" ;;
esac
if [[ "$filter_type" != "ere" ]]; then
    refuse "$CONF has FilterType '${filter_type:-unset}', not 'ere'" \
        "the conf must say 'FilterType ere' (lowercase: tinyproxy 1.11.1 reads 'ERE' as BRE)"
fi
case "${filter_urls,,}" in
    on | yes) ;;
    *) refuse "$CONF does not filter whole URLs (FilterURLs is '${filter_urls:-unset}')" \
        "the conf must say 'FilterURLs On'" ;;
esac
if [[ "$filter_lines" -ne 1 || "$filter_path" != "\"$FILTER\"" ]]; then
    refuse "$CONF must name the filter exactly once as \"$FILTER\" (found $filter_lines Filter line(s), last: ${filter_path:-none})" \
        "the conf must say 'Filter \"$FILTER\"'"
fi

readable_file "$FILTER" "filter"
rules=0 line_no=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line_no=$((line_no + 1))
    # fgets(buf, 512) in tinyproxy 1.11.1: 511 bytes, the newline excluded, fit in one read.
    if [[ "${#line}" -gt 511 ]]; then
        refuse "$FILTER:$line_no is ${#line} bytes long; tinyproxy would split it into two rules" \
            "keep every filter line within 511 bytes"
    fi
    # Like tinyproxy: everything from the first '#' is a comment, then trim.
    rule="$(trim "${line%%#*}")"
    [[ -z "$rule" ]] && continue
    # bash's =~ compiles with the same libc regcomp(REG_EXTENDED) as tinyproxy; status 2
    # means the pattern does not compile.
    status=0
    [[ "" =~ $rule ]] || status=$?
    if [[ "$status" -eq 2 ]]; then
        refuse "$FILTER:$line_no is not a valid extended regular expression: $rule" \
            "render the filter again with 'isofeat proxy render'"
    fi
    rules=$((rules + 1))
done <"$FILTER"
if [[ "$rules" -eq 0 ]]; then
    refuse "filter $FILTER holds no rule (only blank or comment lines)" \
        "add at least one entry to the whitelist and render again"
fi

case "$MODE" in
    --check)
        printf 'isofeat-proxy: config ok: %d filter rule(s) in %s\n' "$rules" "$FILTER"
        exit 0
        ;;
    --reload)
        # tinyproxy is PID 1 (exec below). With `docker run --init` PID 1 is tini, which
        # forwards the signal to it.
        kill -USR1 1
        printf 'isofeat-proxy: reloading with %d filter rule(s) from %s\n' "$rules" "$FILTER"
        exit 0
        ;;
esac

printf 'isofeat-proxy: starting tinyproxy with %d filter rule(s) from %s\n' "$rules" "$FILTER" >&2
# -d: stay in the foreground as PID 1; with no LogFile/Syslog it logs to stdout.
exec tinyproxy -d -c "$CONF"

# shellcheck shell=bash
# Install helpers shared by the isofeat Features. The source is features/lib/common.sh;
# scripts/sync-feature-lib copies it to features/src/<id>/vendor/common.sh, because the spec
# packages and publishes each Feature folder on its own. Edit the source and run the script; the
# unit tests fail when a copy differs (scripts/sync-feature-lib --check).
#
# Sourced by install.sh after `set -euo pipefail`, with FEATURE set to the Feature's id (messages
# name it). Sourcing only defines: install.sh calls require_root itself, first.

: "${FEATURE:?install.sh sets FEATURE before it sources vendor/common.sh}"

# Written by sandbox-user (ISOFEAT_USER, ISOFEAT_UID, ISOFEAT_GROUP, ISOFEAT_GID, ISOFEAT_HOME),
# read by the Features that install into the sandbox user's home.
SANDBOX_RECORD=/etc/isofeat/sandbox-user.env
# Folders sandbox-user hands to its group (one absolute path a line).
# shellcheck disable=SC2034 # for the install.sh that sources this file
GROUP_WRITABLE_LIST=/etc/isofeat/group-writable.list

die() { echo "ERROR (${FEATURE}): $*" >&2; exit 1; }
log() { echo "${FEATURE}: $*"; }

require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "install.sh must run as root. The devcontainer CLI runs Features as root; by hand, use 'docker run -u root ...'."
    fi
}

# check_distribution NEEDS: Debian, Ubuntu or a derivative; NEEDS says what this Feature uses
# from them (for the message).
check_distribution() {
    local needs="$1" id="" like=""
    if [ -r /etc/os-release ]; then
        # shellcheck source=/dev/null
        id="$(. /etc/os-release && echo "${ID:-}")"
        # shellcheck source=/dev/null
        like="$(. /etc/os-release && echo "${ID_LIKE:-}")"
    fi
    case " ${id} ${like} " in
        *" debian "* | *" ubuntu "*) ;;
        *) die "unsupported distribution '${id:-unknown}': this Feature needs Debian or Ubuntu (${needs}). Use a Debian or Ubuntu base image." ;;
    esac
}

# The proxy named by egress-proxy's containerEnv exists only at run time; while the image is
# built its name does not resolve. Ignore such a proxy for our own downloads (a build proxy that
# resolves is kept). The message names the variable and the host, never the URL: it may hold a
# password.
build_network_env() {
    local var url host
    for var in HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy; do
        url="${!var:-}"
        [ -n "$url" ] || continue
        host="${url#*://}"
        host="${host##*@}"
        host="${host%%/*}"
        if [[ "$host" == \[* ]]; then host="${host#[}"; host="${host%%]*}"; else host="${host%%:*}"; fi
        if ! getent hosts "$host" >/dev/null 2>&1; then
            log "not using ${var} while building: ${host} does not resolve here (it is the sandbox's run-time proxy)"
            unset "$var"
        fi
    done
}

# True when PACKAGE is installed (not merely known to dpkg, e.g. removed with its config kept;
# a package of several architectures prints one line each).
dpkg_installed() {
    local status
    status="$(dpkg-query -W -f='${db:Status-Status}\n' "$1" 2>/dev/null)" || return 1
    [[ $'\n'"${status}"$'\n' == *$'\n'installed$'\n'* ]]
}

# apt_get_install PACKAGE...: install the packages that are not installed yet, nothing when all
# are. The package lists are updated once a run, and a list that fails to update is an error
# (--error-on=any), not a silent install from stale lists. apt gets build_network_env's proxies.
APT_UPDATED=0
apt_get_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "installing ${missing[*]} (apt)"
    # Each step carries its own `|| die`: set -e does not apply inside a subshell that is the
    # left side of `||`.
    (
        build_network_env
        if [ "$APT_UPDATED" = 0 ]; then
            apt-get update -qq --error-on=any || die "apt-get update failed (see above)."
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed (see above)."
    ) || exit 1
    APT_UPDATED=1
}

# write_if_changed FILE CONTENT MODE: write FILE only when its content differs, so a second run
# leaves it (and its mtime) alone; replace it in one step, so a reader never sees half a file.
# The mode is set either way.
write_if_changed() {
    local file="$1" content="$2" mode="$3"
    if [ ! -f "$file" ] || [ "$(cat "$file")" != "$content" ]; then
        mkdir -p "$(dirname "$file")"
        printf '%s\n' "$content" >"$file.isofeat-tmp"
        chmod "$mode" "$file.isofeat-tmp"
        mv -f "$file.isofeat-tmp" "$file"
        log "wrote ${file}"
    fi
    chmod "$mode" "$file"
}

# The sandbox user's name from sandbox-user's record; nothing when there is no record.
sandbox_user_name() {
    [ -r "$SANDBOX_RECORD" ] || return 0
    sed -n 's/^ISOFEAT_USER=\([a-z_][a-z0-9_-]*\)$/\1/p' "$SANDBOX_RECORD" | head -n1
}

#!/bin/bash
# Entrypoint of the isofeat Docker-in-Docker engine.
#
# Runs dockerd with its API on a unix socket only (ISOFEAT_DIND_SOCKET, on a named volume the
# sandbox mounts; no TCP listener), its own bridge (ISOFEAT_DIND_BIP) and address pool
# (ISOFEAT_DIND_ADDRESS_POOL), pulling through HTTP(S)_PROXY: the environment's
# `docker-proxy`. Extra arguments are passed to dockerd.
#
# ISOFEAT_DIND_MODE chooses the mode:
#   rootless (default) rootlesskit makes a user, mount and network namespace (slirp4netns);
#             dockerd and nested root run as uid 1000 (`rootless`), nested uids 1-65536 as
#             100000-165535. The container needs /dev/net/tun, seccomp=unconfined and
#             systempaths=unconfined, and no capability beyond SETUID and SETGID (for
#             newuidmap/newgidmap). Started as root, this script only makes its own copy of
#             /dev/net/tun usable and then drops to `rootless` for good; started as uid 1000
#             it needs /dev/net/tun to be usable already.
#   rootful   dockerd as root: needs CAP_SYS_ADMIN, CAP_NET_ADMIN, a seccomp profile that
#             allows keyctl/add_key/request_key/pivot_root (or unconfined) and
#             `cgroup: private`. The cgroup mounts are made writable here: cgroup v1 by
#             remounting each one rw, cgroup v2 by the usual nesting (move every process into
#             a child cgroup, then delegate the controllers). Whoever controls this engine is
#             root on the host.
#
# Refuses to start (exit 78, message on stderr, which reaches `docker logs`) when the
# container lacks what its mode needs, instead of letting dockerd fail obscurely.
set -euo pipefail

readonly EX_CONFIG=78
readonly SOCKET="${ISOFEAT_DIND_SOCKET:-/run/isofeat/dind/docker.sock}"
readonly BIP="${ISOFEAT_DIND_BIP:-10.214.0.1/24}"
readonly POOL="${ISOFEAT_DIND_ADDRESS_POOL:-base=10.214.0.0/16,size=24}"
readonly SOCKET_GID="${ISOFEAT_DIND_SOCKET_GID:-2000}"
readonly MODE="${ISOFEAT_DIND_MODE:-rootless}"
readonly ROOTLESS_USER=rootless
# A named volume; each mode keeps its own subfolder.
readonly DATA=/var/lib/isofeat-dind
# slirp4netns' built-in DNS forwarder, as seen from the rootless namespace.
readonly SLIRP_DNS=10.0.2.3
SOCKET_DIR="$(dirname -- "$SOCKET")"
readonly SOCKET_DIR

log() { printf 'isofeat-dind: %s\n' "$*" >&2; }

refuse() {
    log "refusing to start: $1"
    log "fix: $2"
    exit "$EX_CONFIG"
}

prepare_socket() {
    if [[ ! -d "$SOCKET_DIR" || ! -w "$SOCKET_DIR" ]]; then
        refuse "the socket folder $SOCKET_DIR is missing or not writable by uid $(id -u)" \
            "mount the named socket volume there, and let this service create it first (the sandbox depends_on it)"
    fi
    # A socket left by an engine that was killed would make dockerd fail with "address in use".
    rm -f -- "$SOCKET"
    # The sandbox has no docker client of its own (bookworm ships none without the daemon):
    # publish this engine's client next to the socket; the template puts it on the PATH.
    install -d -m 0755 -- "$SOCKET_DIR/bin"
    if ! cmp -s /usr/bin/docker "$SOCKET_DIR/bin/docker"; then
        install -m 0755 /usr/bin/docker "$SOCKET_DIR/bin/docker.new"
        mv -f -- "$SOCKET_DIR/bin/docker.new" "$SOCKET_DIR/bin/docker"
    fi
    if [[ -n "${HTTPS_PROXY:-}${https_proxy:-}" ]]; then
        log "pulls go through ${HTTPS_PROXY:-${https_proxy}}"
    else
        log "no HTTPS_PROXY: the engine can pull nothing (it has no direct egress)"
    fi
}

data_root_check() {
    local dir="$1"
    [[ -d "$dir" ]] || mkdir -m 0700 -- "$dir"
    if [[ "$(stat -f -c %T -- "$dir")" == "overlayfs" ]]; then
        log "warning: $dir is on the container's overlay root; overlay2 cannot nest there and the"
        log "warning: engine falls back to the slow vfs driver. Mount a named volume on $DATA."
    fi
}

# On an internal network Docker 20.10's embedded DNS never answers for an external name:
# every such lookup waits out the resolver's timeouts (20-40 s). dockerd looks up each
# registry's name before a pull (to match it against the insecure-registry ranges), so every
# pull from a registry other than Docker Hub would stall that long. One attempt of one
# second bounds it (service names answer in milliseconds); the rootless engine goes further
# and fails every lookup but the proxy's at once (rootless_child).
write_resolv_conf() {
    local path="$1" nameserver="$2" tmp
    tmp="$(mktemp /etc/.resolv.conf.XXXXXX)"
    printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$nameserver" >"$tmp"
    chmod 0644 "$tmp"
    # /etc/resolv.conf may be a bind mount (rootful: write through it) or a link to the
    # parent's file (rootless copy-up: replace the link).
    if [[ -L "$path" ]] || ! cat "$tmp" >"$path" 2>/dev/null; then
        mv -f -- "$tmp" "$path"
    else
        rm -f -- "$tmp"
    fi
}

# The host part of HTTPS_PROXY (http://docker-proxy:8888 -> docker-proxy).
proxy_host() {
    local url="${HTTPS_PROXY:-${https_proxy:-}}"
    url="${url#*://}"
    url="${url#*@}"
    url="${url%%/*}"
    printf '%s' "${url%:*}"
}

# /etc/hosts in the rootless namespace: the parent's entries plus one for the proxy.
pin_proxy_address() {
    local name="$1" address="$2" tmp
    tmp="$(mktemp /etc/.hosts.XXXXXX)"
    awk -v n="$name" '$2 != n' /etc/hosts >"$tmp"
    printf '%s\t%s\n' "$address" "$name" >>"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" /etc/hosts
}

# DNS only: /etc/hosts holds the pinned, possibly stale, address.
lookup_v4() {
    timeout 3 getent -s dns ahostsv4 "$1" | awk 'NR == 1 { print $1 }'
}

# Runs in a mount namespace of its own in which /etc/resolv.conf still points at slirp's
# forwarder (the real one refuses every lookup): it follows the proxy's address should
# compose recreate that container.
refresh_proxy_address() {
    local name="$1" address current
    while sleep 5; do
        address="$(lookup_v4 "$name")" || continue
        [[ -n "$address" ]] || continue
        current="$(awk -v n="$name" '$2 == n { print $1; exit }' /etc/hosts)"
        if [[ "$address" != "$current" ]]; then
            pin_proxy_address "$name" "$address"
            log "the proxy $name moved to $address"
        fi
    done
}

dockerd_args=(
    "--host=unix://$SOCKET"
    "--bip=$BIP"
    "--default-address-pool=$POOL"
)

start_rootless() {
    [[ -c /dev/net/tun ]] ||
        refuse "/dev/net/tun is missing (slirp4netns needs it)" "add 'devices: [/dev/net/tun]' to the service"
    if [[ "$(id -u)" == "0" ]]; then
        # Docker copies the host node's mode, often 0600 root. This is the container's own
        # node: opening it up here changes nothing on the host.
        chmod 0666 /dev/net/tun
        # Drop root for good, tini (PID 1) included: root without CAP_KILL could not forward
        # `docker stop`'s SIGTERM to the engine's uid, and the engine would be killed
        # instead of shut down. No capability is kept; the bounding set (SETUID, SETGID) is
        # what newuidmap/newgidmap may still gain from their file capabilities.
        exec setpriv --reuid="$ROOTLESS_USER" --regid=dev --init-groups --inh-caps=-all \
            -- env HOME=/home/rootless /usr/bin/tini -- "$0" "$@"
    fi
    # Started as uid 1000 (`user:` set): tini still goes first.
    [[ $$ != 1 ]] || exec /usr/bin/tini -- "$0" "$@"
    [[ -r /dev/net/tun && -w /dev/net/tun ]] ||
        refuse "uid $(id -u) cannot open /dev/net/tun" \
            "start the container as root (the default user); the entrypoint drops to uid 1000 itself"
    [[ "$(id -g)" == "$SOCKET_GID" ]] ||
        refuse "the engine runs with gid $(id -g), not $SOCKET_GID" \
            "start the container as root (the default user); the entrypoint drops to uid 1000 itself"
    # newuidmap gains CAP_SETUID from its file capabilities only without no-new-privileges.
    if [[ "$(awk '/^NoNewPrivs:/ {print $2}' /proc/self/status)" == "1" ]]; then
        refuse "no-new-privileges is set: newuidmap cannot map the nested uids" \
            "drop 'no-new-privileges' from this service's security_opt (it stays on the sandbox)"
    fi
    if ! unshare --user --map-root-user true 2>/dev/null; then
        refuse "this container may not create a user namespace" \
            "run the service with 'security_opt: [seccomp=unconfined, apparmor=unconfined]'; on hosts that forbid unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=0, Ubuntu's kernel.apparmor_restrict_unprivileged_userns=1) use the rootful mode (docs/docker-in-docker.md)"
    fi
    if grep -qE '^[^ ]+ /proc/(kcore|keys|timer_list|sched_debug|scsi|acpi) ' /proc/self/mounts; then
        refuse "parts of /proc are masked, so the nested engine cannot mount /proc for its containers" \
            "add 'systempaths=unconfined' to the service's security_opt"
    fi
    prepare_socket
    data_root_check "$DATA/rootless"
    # The runtime folder outlives a `docker stop` (it is in the container's own layer); a
    # stale docker.pid there makes dockerd refuse to start. Nothing of ours runs yet.
    find "${XDG_RUNTIME_DIR:?}" -mindepth 1 -delete
    log "starting a rootless engine as uid $(id -u) (nested root maps to uid $(id -u))"
    # What Debian's dockerd-rootless.sh does, plus the resolver set-up (rootless_child) that
    # only a step inside the namespaces can make:
    # - slirp4netns for the namespace's network: it leaves through this container's own
    #   network stack, so it reaches only what this container reaches (the internal network
    #   and docker-proxy); --disable-host-loopback keeps it off this container's 127.0.0.1;
    # - the builtin port driver serves `docker run -p` inside this container only (no port of
    #   this service is published);
    # - --copy-up /etc and /run give the namespace writable copies of both.
    exec rootlesskit \
        --net=slirp4netns --mtu=65520 \
        --slirp4netns-sandbox=auto --slirp4netns-seccomp=auto \
        --disable-host-loopback --port-driver=builtin \
        --copy-up=/etc --copy-up=/run \
        --propagation=rslave \
        "$0" --rootless-child "$@"
}

rootless_child() {
    # Inside rootlesskit's namespaces, as namespace root (= uid 1000 outside).
    # Links to the parent's files, which would stop our own from being created.
    rm -f /run/docker /run/containerd /run/xtables.lock
    write_resolv_conf /etc/resolv.conf "$SLIRP_DNS"
    local name address
    name="$(proxy_host)"
    local literal='^([0-9.]+|\[.*\])$'
    if [[ -n "$name" && ! "$name" =~ $literal ]]; then
        # dockerd needs DNS for one name only, the proxy's: pin it in /etc/hosts and let
        # every other lookup fail at once (nothing listens on 127.0.0.1:53 here), instead
        # of after a timeout per pull.
        address="$(lookup_v4 "$name")" || address=""
        if [[ -n "$address" ]]; then
            pin_proxy_address "$name" "$address"
        else
            # Fail closed without blocking the sandbox: pulls fail until the proxy is up and
            # refresh_proxy_address pins it.
            log "warning: the proxy $name does not resolve (is the docker-proxy service up?)"
        fi
        cp /etc/resolv.conf /etc/resolv.conf.slirp
        write_resolv_conf /etc/resolv.conf 127.0.0.1
        # shellcheck disable=SC2016  # $0 and $1 are the inner shell's arguments
        unshare --mount --propagation private -- /bin/bash -c \
            'mount --bind /etc/resolv.conf.slirp /etc/resolv.conf && exec "$0" --refresh-proxy-address "$1"' \
            "$0" "$name" &
    fi
    # Inside the user namespace gid 0 is our own gid, $SOCKET_GID (the sandbox's `dev`
    # group): the socket becomes rootless:dev 0660.
    exec dockerd --rootless --group=0 --data-root="$DATA/rootless" "${dockerd_args[@]}" "$@"
}

cgroup_v1_rw() {
    # Docker mounts the cgroup hierarchies read-only into a container that is not privileged;
    # with `cgroup: private` each mount is this container's own subtree.
    local mount_point fstype
    while read -r mount_point fstype; do
        [[ "$fstype" == "cgroup" ]] || continue
        mount -o remount,rw,bind -- "$mount_point" "$mount_point" 2>/dev/null ||
            mount -o remount,rw -- "$mount_point" ||
            refuse "cannot remount the cgroup hierarchy $mount_point read-write" \
                "run the service with 'cgroup: private' and CAP_SYS_ADMIN"
    done < <(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print $5, $(i + 1); break } }' /proc/self/mountinfo)
}

cgroup_v2_nest() {
    # The usual cgroup v2 nesting (as in moby's hack/dind): a cgroup that holds processes
    # may not delegate controllers, so move every process of ours into a leaf first.
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
    [[ -w /sys/fs/cgroup/cgroup.subtree_control ]] ||
        refuse "/sys/fs/cgroup (cgroup v2) is not writable" \
            "run the service with 'cgroup: private' and CAP_SYS_ADMIN"
    mkdir -p /sys/fs/cgroup/init
    local pid
    # Processes can come and go while we move them; retry until the root holds none.
    for _ in 1 2 3 4 5; do
        while read -r pid; do
            echo "$pid" >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
        done </sys/fs/cgroup/cgroup.procs
        [[ -s /sys/fs/cgroup/cgroup.procs ]] || break
    done
    sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers \
        >/sys/fs/cgroup/cgroup.subtree_control
}

start_rootful() {
    local cap_eff
    cap_eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
    # CAP_SYS_ADMIN is bit 21, CAP_NET_ADMIN bit 12.
    (((16#$cap_eff >> 21) & 1)) ||
        refuse "the rootful engine needs CAP_SYS_ADMIN" \
            "add 'cap_add: [SYS_ADMIN, NET_ADMIN]' (docs/docker-in-docker.md), or use the rootless mode"
    (((16#$cap_eff >> 12) & 1)) ||
        refuse "the rootful engine needs CAP_NET_ADMIN" "add 'cap_add: [SYS_ADMIN, NET_ADMIN]'"
    if [[ "$(stat -f -c %T /sys/fs/cgroup)" == "cgroup2fs" ]]; then
        log "cgroup v2: nesting into /sys/fs/cgroup/init and delegating the controllers"
        cgroup_v2_nest
    else
        log "cgroup v1: remounting the cgroup hierarchies read-write"
        cgroup_v1_rw
    fi
    prepare_socket
    data_root_check "$DATA/rootful"
    # Runtime state left by a `docker stop` (a stale pid file stops dockerd from starting).
    rm -rf /run/docker /run/containerd /run/docker.pid
    write_resolv_conf /etc/resolv.conf "$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)"
    log "starting a ROOTFUL engine: whoever controls it is root on this host"
    exec dockerd --group="$SOCKET_GID" --data-root="$DATA/rootful" "${dockerd_args[@]}" "$@"
}

case "${1:-}" in
    --rootless-child)
        shift
        rootless_child "$@"
        ;;
    --refresh-proxy-address) refresh_proxy_address "$2" ;;
esac
case "$MODE" in
    rootless) start_rootless "$@" ;;
    rootful)
        [[ "$(id -u)" == "0" ]] ||
            refuse "the rootful mode runs as root, not uid $(id -u)" "drop 'user:' from the service"
        # tini reaps and forwards `docker stop`'s SIGTERM so that dockerd shuts down cleanly.
        [[ $$ != 1 ]] || exec /usr/bin/tini -- "$0" "$@"
        start_rootful "$@"
        ;;
    *) refuse "ISOFEAT_DIND_MODE is '$MODE'" "set it to 'rootless' (the default) or 'rootful'" ;;
esac

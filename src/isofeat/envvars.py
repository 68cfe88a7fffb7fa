"""Every environment variable the package reads, in one place.

Functions take ``environ: Mapping[str, str]`` so that tests never touch the real HOME.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HOME = "HOME"
XDG_CONFIG_HOME = "XDG_CONFIG_HOME"
XDG_STATE_HOME = "XDG_STATE_HOME"
# A PEM file or a folder of PEM files to trust inside every image we build.
ISOFEAT_EXTRA_CA_CERTS = "ISOFEAT_EXTRA_CA_CERTS"
# Set inside our containers by the sandbox image/features; agents refuse to launch without it.
ISOFEAT_SANDBOX = "ISOFEAT_SANDBOX"
# Inside a sandbox: where the doctor finds the workspace (default /workspace); tests set it.
ISOFEAT_WORKSPACE = "ISOFEAT_WORKSPACE"
CI = "CI"
DOCKER_HOST = "DOCKER_HOST"
# Where the docker CLI finds its engine when DOCKER_HOST is unset (engine.py asks the same one).
DOCKER_CONTEXT = "DOCKER_CONTEXT"
DOCKER_CONFIG = "DOCKER_CONFIG"
# Where `isofeat secrets set` keeps values: "keyring" or "file" (default: the keyring when it
# has a real backend, else a 0600 file under the config folder).
ISOFEAT_SECRETS_BACKEND = "ISOFEAT_SECRETS_BACKEND"

ALL: tuple[str, ...] = (
    HOME,
    XDG_CONFIG_HOME,
    XDG_STATE_HOME,
    ISOFEAT_EXTRA_CA_CERTS,
    ISOFEAT_SANDBOX,
    ISOFEAT_WORKSPACE,
    CI,
    DOCKER_HOST,
    DOCKER_CONTEXT,
    DOCKER_CONFIG,
    ISOFEAT_SECRETS_BACKEND,
    "ISOFEAT_NOTIFY_DIR",  # defined with the notification helpers below
    "ISOFEAT_NOTIFY_SOURCE",
    "ISOFEAT_PROBE_ALLOWED",  # defined with the self-test's probes below
    "ISOFEAT_PROBE_DENIED",
    "ISOFEAT_ENGINE_VERSION",
    "ISOFEAT_SSH_CONFIG",  # defined in isofeat.remote: `ssh -F` for tasks on other machines
    "ISOFEAT_WHEEL_DIR",  # isofeat.remote: the wheel `task new --on --install` ships
)


def in_sandbox(environ: Mapping[str, str] = os.environ) -> bool:
    """The sandbox image sets ISOFEAT_SANDBOX=1; a container alone is not enough."""
    return environ.get(ISOFEAT_SANDBOX) == "1"


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/isofeat``, falling back to ``~/.config/isofeat``."""
    base = environ.get(XDG_CONFIG_HOME) or str(
        Path(environ.get(HOME, "~")).expanduser() / ".config"
    )
    return Path(base) / "isofeat"


def global_whitelist(kind: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The user's global whitelist layer for ``kind`` ("sandbox" or "dind")."""
    name = "whitelist.txt" if kind == "sandbox" else f"whitelist-{kind}.txt"
    return config_dir(environ) / name


# --- notifications (`isofeat notify`) ---
# Inside a sandbox: the folder `isofeat notify send` writes into (default /run/isofeat/notify,
# where the environment's own host folder is bind-mounted).
ISOFEAT_NOTIFY_DIR = "ISOFEAT_NOTIFY_DIR"
# Inside a sandbox: names the sender ("claude", "codex", ...) in each notification. Shown as
# information only; the host labels notifications by folder, never by this value.
ISOFEAT_NOTIFY_SOURCE = "ISOFEAT_NOTIFY_SOURCE"


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/isofeat``, falling back to ``~/.local/state/isofeat``: the one place
    the XDG state root is worked out (environments' state and notifications live below)."""
    base = environ.get(XDG_STATE_HOME) or str(
        Path(environ.get(HOME, "~")).expanduser() / ".local" / "state"
    )
    return Path(base) / "isofeat"


def notify_root(environ: Mapping[str, str] = os.environ) -> Path:
    """Host folder holding one notification folder per environment.

    Notifications are state (pending messages), not configuration.
    """
    return state_dir(environ) / "notify"


# --- the self-test's proxy probes (`isofeat doctor`) ---
# Inside a sandbox: HOST:PORT that the rendered filter allows, and one it denies. `isofeat
# init` picks them from the merged whitelist it rendered (built-in, the user's global file,
# the project's) and Compose passes them to `dev`: the container sees only the project's
# file, so the doctor cannot work the merged answer out for itself.
ISOFEAT_PROBE_ALLOWED = "ISOFEAT_PROBE_ALLOWED"
ISOFEAT_PROBE_DENIED = "ISOFEAT_PROBE_DENIED"

# --- the engine's version (`isofeat doctor`'s engine-dns check) ---
# Inside a sandbox: the host engine's version, as `isofeat init` recorded it in .env (the
# sandbox cannot ask the engine). See engine.py for why it matters (CVE-2024-29018).
ISOFEAT_ENGINE_VERSION = "ISOFEAT_ENGINE_VERSION"

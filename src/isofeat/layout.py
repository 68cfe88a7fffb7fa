"""One environment's identity and layout: the facts every other module asks for.

An environment is one worktree. From its real path come its id, its Compose project name and
its host folders (state, proxy renders, notifications); the images, file names, container
paths and the sandbox user's uid and gid are the same for all of them. Where another format
must repeat one of these facts (a Feature's default, ``compose.yaml``'s ``user:``, the DinD
image), a unit test reads that copy and compares it with the value here.

Standard library only, and nothing heavy: ``isofeat init`` imports this on every container
open (benchmarks/bench_cli.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from isofeat import __version__
from isofeat.envvars import state_dir

#: The agent's user inside every sandbox, and the group (``dev``) the host user shares with it.
#: The sandbox-user Feature's defaults, compose.yaml's ``user:`` and the DinD image repeat
#: them; tests/unit/test_layout.py compares.
SANDBOX_UID = 1001
SANDBOX_GID = 2000

# --- files in the workspace ---
DEVCONTAINER_DIR = ".devcontainer"
#: Project settings, written by the template (see :mod:`isofeat.settings`).
SETTINGS_FILE = "isofeat.json"
#: What ``isofeat init`` writes for Compose on every open.
ENV_FILE = ".env"

# --- paths inside the sandbox container (compose.yaml mounts them) ---
WORKSPACE_TARGET = "/workspace"
#: The user's git objects, mounted read-only for the agent's git to borrow.
GIT_OBJECTS_TARGET = "/run/isofeat/git-objects"
NO_GIT_TARGET = "/run/isofeat/no-git"
NO_POINTER_TARGET = "/run/isofeat/no-git-pointer"
#: The trust bundle (system CAs + the environment's broker CA), mounted read-only into `dev`.
TRUST_TARGET = "/run/isofeat/trust"
#: The broker's rendered folder (bindings with real values, CA key) inside the broker only.
BROKER_CONF_TARGET = "/etc/isofeat/broker"
#: The broker's Compose service name and port: tinyproxy's `Upstream http broker:8080 "host"`.
BROKER_SERVICE = "broker"
BROKER_PORT = 8080

# --- images (built by `isofeat image build`; compose.yaml gets the tags from .env) ---
BASE_IMAGE = "isofeat/base:bookworm"
PROXY_REPOSITORY = "isofeat/proxy"
DIND_PROXY_REPOSITORY = "isofeat/dind-proxy"
DIND_REPOSITORY = "isofeat/dind"
#: The credential broker (mitmproxy + isofeat's addon), see docs/secrets.md.
BROKER_REPOSITORY = "isofeat/broker"
PROXY_IMAGE = f"{PROXY_REPOSITORY}:{__version__}"
DIND_IMAGE = f"{DIND_REPOSITORY}:{__version__}"
BROKER_IMAGE = f"{BROKER_REPOSITORY}:{__version__}"


def env_id_for(workspace: Path) -> str:
    """``<slug of the folder name>-<10 hex of sha256(real path)>``: stable and unique."""
    return env_id_for_real_path(os.path.realpath(workspace))


def env_id_for_real_path(real: str) -> str:
    """:func:`env_id_for` of a path already resolved, possibly on another machine."""
    slug = re.sub(r"[^a-z0-9]+", "-", os.path.basename(real).lower()).strip("-")[:40] or "env"
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug}-{digest}"


def project_name(env_id: str) -> str:
    """The Compose project of an environment: no other worktree can have it."""
    return f"isofeat-{env_id}"


def state_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The host folder holding one state folder per environment."""
    return state_dir(environ) / "envs"


class Environment:
    """The host side of one worktree's environment: its id and its folders (none created).

    A plain class, not a dataclass: importing dataclasses costs init a tenth of its time.
    """

    def __init__(self, workspace: Path, environ: Mapping[str, str] = os.environ) -> None:
        self.workspace = workspace
        self.environ = environ
        self.env_id = env_id_for(workspace)
        self.project = project_name(self.env_id)

    @property
    def devcontainer(self) -> Path:
        return self.workspace / DEVCONTAINER_DIR

    @property
    def state_dir(self) -> Path:
        """Private to the host user: it holds the proxies' renders and the agent's git."""
        return state_root(self.environ) / self.env_id

    @property
    def proxy_dir(self) -> Path:
        return self.state_dir / "proxy"

    @property
    def dind_proxy_dir(self) -> Path:
        return self.state_dir / "dind-proxy"

    @property
    def broker_dir(self) -> Path:
        """The broker's render: real values and the CA key; only the broker's uid reads it."""
        return self.state_dir / "broker"

    @property
    def trust_dir(self) -> Path:
        """Public: the environment's CA certificate and the bundle `dev` trusts."""
        return self.state_dir / "trust"

    @property
    def secrets_env(self) -> Path:
        """`dev`'s env_file: placeholders and CA variables (read by Compose on the host)."""
        return self.state_dir / "dev-secrets.env"

    @property
    def agent_git(self) -> Path:
        """The sandbox's own repository (made by ``isofeat init``)."""
        return self.state_dir / "git"

    @property
    def notify_dir(self) -> Path:
        """Where the sandbox's notifications arrive (bind-mounted into the container)."""
        return state_dir(self.environ) / "notify" / self.env_id

    def __repr__(self) -> str:
        return f"Environment({str(self.workspace)!r}, env_id={self.env_id!r})"

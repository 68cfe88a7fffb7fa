"""``isofeat init``: prepare one environment on the host before its containers start.

It runs as the ``initializeCommand`` on every open (VS Code, JetBrains, ``devcontainer up``),
so it is idempotent, touches a file only when its content changes, and imports nothing
heavy: interpreter start-up plus this module is its whole cost (see benchmarks/).

What it does, for the worktree it is given:

1. derives a stable environment id from the worktree's real path, and from it a Compose
   project name no other worktree can have;
2. creates this environment's notification folder and state folder;
3. merges the whitelist layers and renders both proxies' configs into the state folder
   (outside the workspace: the agent must not read upstream credentials from it);
4. finds the git folders the container must see (the main repository's, for a linked
   worktree) and the hooks and config that must stay read-only;
5. writes ``.devcontainer/.env``, which Compose reads for every ``${VAR}`` in compose.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from isofeat import __version__
from isofeat.errors import IsofeatError

#: The sandbox group shared by the host user and the container user.
SANDBOX_GID = 2000
SETTINGS_FILE = "isofeat.json"
ENV_FILE = ".env"
NO_GIT_TARGET = "/run/isofeat/no-git"
NO_WORKTREE_TARGET = "/run/isofeat/no-worktree"
DIND_POOL = (10, 213)  # DinD subnets are 10.213.X.0/24, X chosen by the environment id


class Settings:
    """Project settings from ``.devcontainer/isofeat.json`` (written by the template)."""

    # A plain class, not a dataclass: importing dataclasses costs init a tenth of its time.
    def __init__(
        self, docker_in_docker: bool = False, upstream: str | None = None,
        no_upstream: tuple[str, ...] = (), copy_to_tasks: tuple[str, ...] = (),
    ) -> None:
        self.docker_in_docker = docker_in_docker
        self.upstream = upstream
        self.no_upstream = no_upstream
        self.copy_to_tasks = copy_to_tasks  # untracked files `isofeat task new` copies

    def __repr__(self) -> str:
        return f"Settings({self.docker_in_docker!r}, {self.upstream!r}, {self.no_upstream!r})"


class GitMounts:
    """Host git paths to mount, each with the path it gets in the container."""

    def __init__(self, *, hooks: str, hooks_target: str, config: str, config_target: str,
                 common: str, common_target: str) -> None:
        self.hooks, self.hooks_target = hooks, hooks_target
        self.config, self.config_target = config, config_target
        self.common, self.common_target = common, common_target


def env_id_for(workspace: Path) -> str:
    """``<slug of the folder name>-<10 hex of sha256(real path)>``: stable and unique."""
    real = os.path.realpath(workspace)
    slug = re.sub(r"[^a-z0-9]+", "-", os.path.basename(real).lower()).strip("-")[:40] or "env"
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug}-{digest}"


def project_name(env_id: str) -> str:
    return f"isofeat-{env_id}"


def state_root(environ: Mapping[str, str]) -> Path:
    from isofeat.envvars import HOME, XDG_STATE_HOME

    base = environ.get(XDG_STATE_HOME) or str(
        Path(environ.get(HOME, "~")).expanduser() / ".local" / "state"
    )
    return Path(base) / "isofeat" / "envs"


def read_settings(devcontainer: Path) -> Settings:
    path = devcontainer / SETTINGS_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise IsofeatError(
            f"{path}:{err.lineno}: not valid JSON: {err.msg}",
            fix="fix the JSON syntax (no comments or trailing commas in this file)",
        ) from None
    if not isinstance(data, dict):
        raise IsofeatError(
            f"{path}:1: expected a JSON object", fix='write {"dockerInDocker": false}'
        )
    known = {"dockerInDocker", "upstream", "noUpstream", "extraCaCerts", "copyToTasks"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise IsofeatError(
            f"{path}: unknown setting(s) {', '.join(unknown)}",
            fix=f"use only {', '.join(sorted(known))}",
        )
    dind = data.get("dockerInDocker", False)
    upstream = data.get("upstream")
    no_upstream = data.get("noUpstream", [])
    if not isinstance(dind, bool):
        raise IsofeatError(
            f"{path}: dockerInDocker must be true or false", fix="write true or false"
        )
    if upstream is not None and not isinstance(upstream, str):
        raise IsofeatError(f"{path}: upstream must be a string or null",
                           fix='write "socks5://HOST:PORT", "http://HOST:PORT" or null')
    if not isinstance(no_upstream, list) or not all(isinstance(d, str) for d in no_upstream):
        raise IsofeatError(f"{path}: noUpstream must be a list of domains",
                           fix='write ["internal.example.com"]')
    copy = data.get("copyToTasks", [])
    if not isinstance(copy, list) or not all(isinstance(c, str) for c in copy):
        raise IsofeatError(f"{path}: copyToTasks must be a list of paths", fix='write [".env"]')
    return Settings(dind, upstream or None, tuple(no_upstream), tuple(copy))


def _read_gitdir_file(dot_git: Path) -> Path:
    """A linked worktree's ``.git`` is a file: ``gitdir: /main/.git/worktrees/NAME``."""
    text = dot_git.read_text(encoding="utf-8").strip()
    if not text.startswith("gitdir:"):
        raise IsofeatError(f"{dot_git}: not a git worktree pointer",
                           fix="run `git worktree repair` in the main repository")
    target = Path(text.split(":", 1)[1].strip())
    return (dot_git.parent / target).resolve() if not target.is_absolute() else target.resolve()


def git_mounts(workspace: Path, state: Path) -> GitMounts:
    """Which host git folders the container sees, and which of them stay read-only.

    Hooks and config are what the host's git would execute or obey (``core.hooksPath``,
    ``core.fsmonitor``), so they are mounted read-only at the path the container uses.
    """
    dot_git = workspace / ".git"
    empty = state / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    empty_config = state / "empty-gitconfig"
    if not empty_config.exists():
        empty_config.write_text("")
    if dot_git.is_dir():
        common = dot_git.resolve()
        (common / "hooks").mkdir(exist_ok=True)
        return GitMounts(
            hooks=str(common / "hooks"), hooks_target="/workspace/.git/hooks",
            config=str(common / "config"), config_target="/workspace/.git/config",
            common=str(empty), common_target=NO_WORKTREE_TARGET,
        )
    if dot_git.is_file():
        gitdir = _read_gitdir_file(dot_git)
        commondir = gitdir / "commondir"
        common = gitdir
        if commondir.exists():
            common = (gitdir / commondir.read_text().strip()).resolve()
        (common / "hooks").mkdir(exist_ok=True)
        # The main repository's git folder appears at its host path, so that the worktree's
        # "gitdir:" pointer resolves inside the container (devcontainers/cli#796).
        return GitMounts(
            hooks=str(common / "hooks"), hooks_target=str(common / "hooks"),
            config=str(common / "config"), config_target=str(common / "config"),
            common=str(common), common_target=str(common),
        )
    return GitMounts(
        hooks=str(empty), hooks_target=f"{NO_GIT_TARGET}/hooks",
        config=str(empty_config), config_target=f"{NO_GIT_TARGET}/config",
        common=str(empty), common_target=NO_WORKTREE_TARGET,
    )


def share_with_sandbox(workspace: Path) -> str:
    """Make the worktree writable by the sandbox group (gid 2000), once.

    The agent is uid 1001 in group ``dev`` (2000), which the host user shares. Folders get
    group 2000, group write and setgid (new files inherit the group); files get group
    read/write. Only the first open pays for the walk: a worktree whose root already has
    group 2000 with write and setgid is left alone. macOS (Docker Desktop) maps ownership
    on its own file sharing, so nothing is changed there.
    """
    import stat
    import sys

    if sys.platform == "darwin":
        return "skipped (macOS file sharing)"
    st = workspace.stat()
    want = stat.S_IWGRP | stat.S_ISGID
    if st.st_gid == SANDBOX_GID and st.st_mode & want == want:
        return "already shared"
    changed = 0
    try:
        for root, dirs, files in os.walk(workspace):
            for name in (*dirs, *files):
                path = os.path.join(root, name)
                lst = os.lstat(path)
                if stat.S_ISLNK(lst.st_mode):
                    continue  # never follow a link out of the worktree
                os.chown(path, -1, SANDBOX_GID)
                mode = stat.S_IMODE(lst.st_mode)
                # Group gets what the owner has (read, write, search), never more.
                mode |= (mode & 0o700) >> 3
                if stat.S_ISDIR(lst.st_mode):
                    mode |= stat.S_ISGID | stat.S_IRWXG
                os.chmod(path, mode)
                changed += 1
        os.chown(workspace, -1, SANDBOX_GID)
        # Group rwx + setgid is the point: the sandbox group writes here. No world bits added.
        os.chmod(workspace, stat.S_IMODE(st.st_mode) | stat.S_IRWXG | stat.S_ISGID)  # noqa: S103
    except PermissionError as err:
        raise IsofeatError(
            f"{workspace}: cannot share the worktree with the sandbox group {SANDBOX_GID}: "
            f"{err.strerror}: {err.filename}",
            fix=f"add your user to group {SANDBOX_GID} (sudo groupadd -g {SANDBOX_GID} dev; "
                "sudo usermod -aG dev $USER; log in again), or run "
                f"`isofeat init --no-share` and fix permissions yourself (docs/template.md)",
        ) from None
    return f"shared {changed} paths with group {SANDBOX_GID}"


def dind_subnet(env_id: str) -> str:
    third = int(hashlib.sha256(env_id.encode()).hexdigest()[:4], 16) % 256
    return f"{DIND_POOL[0]}.{DIND_POOL[1]}.{third}.0/24"


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    from isofeat.atomic import write_text  # tempfile is a costly import; only when writing

    write_text(path, text)
    return True


def _render_key(defaults: str, files: list[Path], settings: Settings,
                allow_clients: tuple[str, ...]) -> str:
    """A digest of everything a render depends on; equal digests give equal files."""
    digest = hashlib.sha256(f"{__version__}\0{defaults}\0{settings}\0{allow_clients}".encode())
    builtin = Path(__file__).parent / "whitelists" / f"{defaults}.txt"
    for path in (builtin, *files):
        digest.update(b"\0" + str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _render_proxy(
    out: Path, *, defaults: str, project_file: Path, settings: Settings,
    allow_clients: tuple[str, ...], environ: Mapping[str, str],
) -> int:
    """Render one proxy's config into ``out``; skipped when nothing it depends on changed."""
    from isofeat.envvars import global_whitelist

    files = [p for p in (global_whitelist(defaults, environ), project_file) if p.is_file()]
    key = _render_key(defaults, files, settings, allow_clients)
    stamp = out / ".render-key"
    try:
        cached = stamp.read_text(encoding="ascii").split()
        if cached[0] == key and (out / "filter").is_file() and (out / "tinyproxy.conf").is_file():
            return int(cached[1])
    except (FileNotFoundError, IndexError, ValueError):
        pass

    from isofeat import proxy_render
    from isofeat.whitelist import collect_layers, merge

    layers = collect_layers(
        [project_file] if project_file.is_file() else [],
        defaults=defaults, include_global=True, environ=environ,
    )
    policy = merge(layers)
    rendered = proxy_render.render(
        policy, layers=[layer.label for layer in layers], upstream=settings.upstream,
        no_upstream=settings.no_upstream, allow_clients=allow_clients,
    )
    out.mkdir(parents=True, exist_ok=True)
    # The proxy reads the folder through a bind mount as its own non-root user.
    out.chmod(0o755)
    _write_if_changed(out / proxy_render.FILTER_NAME, rendered.filter)
    _write_if_changed(out / proxy_render.CONF_NAME, rendered.conf)
    _write_if_changed(stamp, f"{key} {len(policy.entries)}\n")
    return len(policy.entries)


def init(
    workspace: Path, environ: Mapping[str, str] = os.environ, *, share: bool = True
) -> dict[str, object]:
    from isofeat.notify import ensure_env_notify_dir

    workspace = workspace.resolve()
    devcontainer = workspace / ".devcontainer"
    if not devcontainer.is_dir():
        raise IsofeatError(
            f"{workspace}: has no .devcontainer/ folder",
            fix="add one with `isofeat scaffold`, or run this in the project's folder",
        )
    settings = read_settings(devcontainer)
    env_id = env_id_for(workspace)
    state = state_root(environ) / env_id
    state.mkdir(parents=True, exist_ok=True)

    # The sandbox user (gid 2000) writes notifications; the host user watches them.
    try:
        notify = ensure_env_notify_dir(env_id, environ, mode=0o2770, gid=SANDBOX_GID)
        notify_mode = "group"
    except PermissionError:
        # The host user is not in group 2000: a sticky world-writable folder still lets the
        # sandbox write and the owner (the watcher) remove. Other local users could drop
        # notifications too; docs/notifications.md says how to share the group instead.
        notify = ensure_env_notify_dir(env_id, environ, mode=0o1777)
        notify_mode = "world-sticky"

    git = git_mounts(workspace, state)
    shared = "not asked (--no-share)"
    if share:
        shared = share_with_sandbox(workspace)
        if git.common_target != NO_WORKTREE_TARGET:
            # A linked worktree commits into the main repository's git folder.
            shared += "; main git folder " + share_with_sandbox(Path(git.common))
    subnet = dind_subnet(env_id)
    sandbox_entries = _render_proxy(
        state / "proxy", defaults="sandbox", project_file=devcontainer / "whitelist.txt",
        settings=settings, allow_clients=(), environ=environ,
    )
    dind_entries = _render_proxy(
        state / "dind-proxy", defaults="dind", project_file=devcontainer / "whitelist-dind.txt",
        # Loopback too: the image's healthcheck must meet the filter, not the ACL's refusal.
        settings=settings, allow_clients=(subnet, "127.0.0.1/32"), environ=environ,
    )
    values = {
        "COMPOSE_PROJECT_NAME": project_name(env_id),
        "ISOFEAT_ENV_ID": env_id,
        "ISOFEAT_VERSION": __version__,
        "ISOFEAT_STATE_DIR": str(state),
        "ISOFEAT_PROXY_CONF": str(state / "proxy"),
        "ISOFEAT_DIND_PROXY_CONF": str(state / "dind-proxy"),
        "ISOFEAT_NOTIFY_HOST_DIR": str(notify),
        "ISOFEAT_GIT_HOOKS_DIR": git.hooks,
        "ISOFEAT_GIT_HOOKS_TARGET": git.hooks_target,
        "ISOFEAT_GIT_CONFIG": git.config,
        "ISOFEAT_GIT_CONFIG_TARGET": git.config_target,
        "ISOFEAT_GIT_COMMON_DIR": git.common,
        "ISOFEAT_GIT_COMMON_DIR_TARGET": git.common_target,
        "ISOFEAT_PROXY_IMAGE": f"isofeat/proxy:{__version__}",
        "ISOFEAT_DIND_IMAGE": f"isofeat/dind:{__version__}",
        "ISOFEAT_DIND_SUBNET": subnet,
    }
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise IsofeatError(f"{key}: a path holds a line break: {value!r}",
                               fix="move the project to a path without line breaks")
    text = "# Written by `isofeat init` on every open; do not edit (see .env.example).\n"
    text += "".join(f"{key}={_quote(value)}\n" for key, value in values.items())
    env_path = devcontainer / ENV_FILE
    changed = _write_if_changed(env_path, text)
    return {
        "workspace": str(workspace),
        "env_id": env_id,
        "project": project_name(env_id),
        "state_dir": str(state),
        "env_file": str(env_path),
        "notify_dir": str(notify),
        "notify_mode": notify_mode,
        "sandbox_entries": sandbox_entries,
        "dind_entries": dind_entries,
        # The template turns Docker-in-Docker on with compose.dind.yaml, not in isofeat.json.
        "docker_in_docker": settings.docker_in_docker
        or (devcontainer / "compose.dind.yaml").is_file(),
        "worktree": (workspace / ".git").is_file(),
        "workspace_sharing": shared,
        "changed": changed,
    }


def _quote(value: str) -> str:
    # Compose's .env: a value in single quotes is taken literally (no ${} interpolation).
    if re.fullmatch(r"[A-Za-z0-9_./:@+=,-]*", value):
        return value
    if "'" in value:
        raise IsofeatError(f"a path holds a single quote: {value!r}",
                           fix="move the project to a path without quotes")
    return f"'{value}'"

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
4. verifies the workspace's git is the user's own, and makes the agent's own repository
   (once) in the state folder: the sandbox commits there, never into the user's ``.git``;
5. writes ``.devcontainer/.env``, which Compose reads for every ``${VAR}`` in compose.yaml,
   and the engine's version, which the sandbox cannot ask for (engine.py, cached).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from isofeat import __version__, hostgit, layout
from isofeat.engine import engine_version
from isofeat.errors import IsofeatError
from isofeat.hostgit import HostGit
from isofeat.layout import NO_GIT_TARGET, NO_POINTER_TARGET, SANDBOX_GID, Environment
from isofeat.settings import Settings, read_settings, resolve_cpus

# Not typing.TYPE_CHECKING: importing typing costs init a few percent of its time.
TYPE_CHECKING = False
if TYPE_CHECKING:  # whitelist is imported only when a render is needed
    from isofeat import quickinit
    from isofeat.whitelist import Policy

DIND_POOL = (10, 213)  # DinD subnets are 10.213.X.0/24, X chosen by the environment id
#: The uid and gid both proxies run as when init runs as root: unprivileged, and neither the
#: sandbox user (1001, group 2000) nor the DinD engine's (1000), so the agent's uid can never
#: read the render. A non-root host user cannot give files away: then the proxies run as
#: that user's own uid and gid (see :func:`proxy_owner`).
PROXY_UID = PROXY_GID = 2888


class GitMounts:
    """What the container sees of git: the agent's own repository, read-write; for a task
    worktree a pointer file that leads to it; and the user's objects, read-only."""

    def __init__(self, *, git_dir: str, git_dir_target: str, pointer: str,
                 pointer_target: str, objects: str, created: bool = False) -> None:
        self.git_dir, self.git_dir_target = git_dir, git_dir_target
        self.pointer, self.pointer_target = pointer, pointer_target
        self.objects = objects
        self.created = created


def git_mounts(host: HostGit | None, env: Environment) -> GitMounts:
    """Verify the workspace's git, make the agent's own repository once, and say what to mount.

    The user's ``.git`` never reaches the container: ``/workspace/.git`` is a mount of the
    agent's repository (``<state>/git``), and a mount point cannot be renamed or replaced from
    inside. For a task worktree, whose ``.git`` is a file, a read-only pointer file is mounted
    over it instead and leads to the agent's repository. See hostgit.py for the trust split.
    """
    state = env.state_dir
    none = state / "no-git"
    none.mkdir(parents=True, exist_ok=True)
    if host is None:
        return GitMounts(git_dir=str(none), git_dir_target=NO_GIT_TARGET, pointer=str(none),
                         pointer_target=NO_POINTER_TARGET, objects=str(none))
    agent = env.agent_git
    created = hostgit.create_agent_git(host, agent, SANDBOX_GID)
    if not host.linked:
        return GitMounts(git_dir=str(agent), git_dir_target=f"{layout.WORKSPACE_TARGET}/.git",
                         pointer=str(none), pointer_target=NO_POINTER_TARGET,
                         objects=str(host.objects), created=created)
    pointer = state / "git-pointer"
    _write_if_changed(pointer, hostgit.pointer_text())
    return GitMounts(git_dir=str(agent), git_dir_target=hostgit.AGENT_GIT_TARGET,
                     pointer=str(pointer), pointer_target=f"{layout.WORKSPACE_TARGET}/.git",
                     objects=str(host.objects), created=created)


def share_with_sandbox(workspace: Path) -> str:
    """Make the worktree writable by the sandbox group (gid 2000), once.

    The agent is uid 1001 in group ``dev`` (2000), which the host user shares. Folders get
    group 2000, group write and setgid (new files inherit the group); files get group
    read/write. Only the first open pays for the walk: a worktree whose root already has
    group 2000 with write and setgid is left alone. macOS (Docker Desktop) maps ownership
    on its own file sharing, so nothing is changed there.

    The agent may have written this folder before (a reopen), so nothing here follows a link:
    the walk holds folder descriptors, and each entry is changed through a descriptor opened
    with O_NOFOLLOW. The workspace's own ``.git`` is skipped: it is the user's, and the
    sandbox never gets it.
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
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    top = str(workspace)
    try:
        for root, dirs, files, root_fd in os.fwalk(workspace):
            if root == top:
                dirs[:] = [d for d in dirs if d != ".git"]
                files = [f for f in files if f != ".git"]
            for name in (*dirs, *files):
                try:
                    fd = os.open(name, flags, dir_fd=root_fd)
                except OSError:
                    continue  # a link (ELOOP), a socket, or nothing we may open
                try:
                    lst = os.fstat(fd)
                    if not (stat.S_ISDIR(lst.st_mode) or stat.S_ISREG(lst.st_mode)):
                        continue
                    os.fchown(fd, -1, SANDBOX_GID)
                    mode = stat.S_IMODE(lst.st_mode)
                    # Group gets what the owner has (read, write, search), never more.
                    mode |= (mode & 0o700) >> 3
                    if stat.S_ISDIR(lst.st_mode):
                        mode |= stat.S_ISGID | stat.S_IRWXG
                    os.fchmod(fd, mode)
                    changed += 1
                finally:
                    os.close(fd)
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


def _write_if_changed(
    path: Path, text: str, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> bool:
    from isofeat.atomic import remove_leftovers, temp_prefix, write_text

    try:
        if path.read_text(encoding="utf-8") == text:
            # Unchanged, but a run killed while writing it may have left a temporary file.
            remove_leftovers(path.parent, temp_prefix(path))
            return False
    except FileNotFoundError:
        pass
    write_text(path, text, mode=mode, owner=owner)
    return True


def proxy_owner() -> tuple[int, int]:
    """The uid:gid the proxies run as, and that alone may read their rendered folders.

    The rendered config can hold upstream credentials, so it is 0600 in a 0700 folder. The
    proxy reads it through a bind mount, so it must run as the files' owner: root hands them
    to :data:`PROXY_UID`; anyone else keeps them and runs the proxy as themselves.
    """
    if os.geteuid() == 0:
        return PROXY_UID, PROXY_GID
    return os.getuid(), os.getgid()


def proxy_container_user(environ: Mapping[str, str]) -> str:
    """``uid:gid`` for the proxies' ``user:`` in compose: the owner of their renders, as the
    container sees it.

    Rootless Docker maps container uid 0 to the host user and every other uid to a
    subordinate one that cannot read the user's 0600 files: there the owner is "0:0", which
    is the unprivileged host user (and the containers drop every capability).
    """
    from isofeat.envvars import DOCKER_HOST

    if os.geteuid() != 0 and "/run/user/" in environ.get(DOCKER_HOST, ""):
        return "0:0"
    return "{}:{}".format(*proxy_owner())


def _make_private(out: Path, owner: tuple[int, int]) -> None:
    """``out`` 0700 and its files 0600, owned by ``owner``; on every open, because a render
    left by an older isofeat (0755 and 0644) is otherwise kept as it is."""
    import stat

    for path, mode in ((out, 0o700), *((out / name, 0o600) for name in _PROXY_FILES)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if (st.st_uid, st.st_gid) != owner:
            os.chown(path, *owner)  # only root gets here: a user's own files already match
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)


_PROXY_FILES = ("filter", "tinyproxy.conf", ".render-key")


def _render_key(defaults: str, files: list[Path], settings: Settings,
                allow_clients: tuple[str, ...], broker_hosts: tuple[str, ...] = ()) -> str:
    """A digest of everything a render depends on; equal digests give equal files."""
    digest = hashlib.sha256(
        f"{__version__}\0{defaults}\0{settings}\0{allow_clients}\0{broker_hosts}".encode())
    builtin = Path(__file__).parent / "whitelists" / f"{defaults}.txt"
    for path in (builtin, *files):
        digest.update(b"\0" + str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


#: Names the doctor asks the proxy for, expecting a 403; the first the policy denies is used.
DENIED_PROBES = ("isofeat-doctor-denied.invalid", "isofeat-doctor-denied-2.invalid")


def _probes(policy: Policy) -> tuple[str, str]:
    """``(allowed, denied)`` HOST:PORT for the doctor, decided on the merged policy.

    The allowed probe is the first plain name (else a name under the first wildcard, else
    the first address), on its CONNECT port; "" when the policy allows nothing.
    """
    allowed = ""
    for kinds in (("name", False), ("name", True), ("ipv4", False), ("ipv6", False)):
        entry = next((e for e in policy.entries if (e.kind, e.wildcard) == kinds), None)
        if entry is not None:
            host = f"isofeat-doctor.{entry.host}" if entry.wildcard else entry.wire_host
            allowed = f"{host}:{entry.ports('connect')}"
            break
    denied = next((f"{name}:443" for name in DENIED_PROBES
                   if not policy.decide(name, 443, "connect").allowed), "")
    return allowed, denied


def _render_proxy(
    out: Path, *, defaults: str, project_file: Path, settings: Settings,
    allow_clients: tuple[str, ...], environ: Mapping[str, str],
    broker_hosts: tuple[str, ...] = (),
) -> tuple[int, str, str]:
    """Render one proxy's config into ``out``; skipped when nothing it depends on changed.

    Returns the entry count and the doctor's allowed and denied probes (see :func:`_probes`).
    """
    from isofeat.envvars import global_whitelist

    files = [p for p in (global_whitelist(defaults, environ), project_file) if p.is_file()]
    key = _render_key(defaults, files, settings, allow_clients, broker_hosts)
    stamp = out / ".render-key"
    owner = proxy_owner()
    try:
        cached = stamp.read_text(encoding="ascii").split(" ")
        if cached[0] == key and (out / "filter").is_file() and (out / "tinyproxy.conf").is_file():
            found = int(cached[1]), cached[2], cached[3].rstrip("\n")
            _make_private(out, owner)
            return found
    except (FileNotFoundError, IndexError, ValueError, UnicodeDecodeError):
        pass

    from isofeat import proxy_render

    policy, _, rendered = proxy_render.render_layers(
        [project_file] if project_file.is_file() else [],
        defaults=defaults, include_global=True, environ=environ,
        upstream=settings.upstream, no_upstream=settings.no_upstream, allow_clients=allow_clients,
        broker_hosts=broker_hosts,
    )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Folder first: the credentials must never sit in a folder others can enter.
    _make_private(out, owner)
    _write_if_changed(out / proxy_render.FILTER_NAME, rendered.filter, mode=0o600, owner=owner)
    _write_if_changed(out / proxy_render.CONF_NAME, rendered.conf, mode=0o600, owner=owner)
    allowed, denied = _probes(policy)
    stamp_text = f"{key} {len(policy.entries)} {allowed} {denied}\n"
    _write_if_changed(stamp, stamp_text, mode=0o600, owner=owner)
    return len(policy.entries), allowed, denied


def init(
    workspace: Path, environ: Mapping[str, str] = os.environ, *, share: bool = True
) -> dict[str, object]:
    from isofeat.notify import ensure_env_notify_dir

    workspace = workspace.resolve()
    env = Environment(workspace, environ)
    devcontainer = env.devcontainer
    if not devcontainer.is_dir():
        raise IsofeatError(
            f"{workspace}: has no .devcontainer/ folder",
            fix="add one with `isofeat scaffold`, or run this in the project's folder",
        )
    settings = read_settings(devcontainer)
    # Before anything is written: a workspace whose git the user does not own stops here.
    host = hostgit.verify(workspace)
    env_id = env.env_id
    state = env.state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    # It holds the proxies' renders (upstream credentials): the user's alone.
    state.chmod(0o700)

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

    git = git_mounts(host, env)
    shared = "not asked (--no-share)"
    if share:
        shared = share_with_sandbox(workspace)
    subnet = dind_subnet(env_id)
    # Secrets: the broker's files, dev's placeholders, and which hosts tinyproxy sends to it.
    from isofeat.broker import broker_container_user, prepare

    secrets = prepare(env, environ)
    sandbox_entries, probe_allowed, probe_denied = _render_proxy(
        env.proxy_dir, defaults="sandbox", project_file=devcontainer / "whitelist.txt",
        settings=settings, allow_clients=(), environ=environ,
        broker_hosts=tuple(secrets.host_names),
    )
    dind_entries, _, _ = _render_proxy(
        env.dind_proxy_dir, defaults="dind", project_file=devcontainer / "whitelist-dind.txt",
        # Loopback too: the image's healthcheck must meet the filter, not the ACL's refusal.
        settings=settings, allow_clients=(subnet, "127.0.0.1/32"), environ=environ,
    )
    values = {
        "COMPOSE_PROJECT_NAME": env.project,
        "ISOFEAT_ENV_ID": env_id,
        "ISOFEAT_VERSION": __version__,
        "ISOFEAT_STATE_DIR": str(state),
        "ISOFEAT_PROXY_CONF": str(env.proxy_dir),
        "ISOFEAT_DIND_PROXY_CONF": str(env.dind_proxy_dir),
        "ISOFEAT_NOTIFY_HOST_DIR": str(notify),
        "ISOFEAT_GIT_DIR": git.git_dir,
        "ISOFEAT_GIT_DIR_TARGET": git.git_dir_target,
        "ISOFEAT_GIT_POINTER": git.pointer,
        "ISOFEAT_GIT_POINTER_TARGET": git.pointer_target,
        "ISOFEAT_GIT_OBJECTS": git.objects,
        "ISOFEAT_PROXY_IMAGE": layout.PROXY_IMAGE,
        "ISOFEAT_DIND_IMAGE": layout.DIND_IMAGE,
        "ISOFEAT_DIND_SUBNET": subnet,
        # Both proxies run as the owner of their 0600 renders (compose.yaml `user:`).
        "ISOFEAT_PROXY_USER": proxy_container_user(environ),
        # What the self-test asks the proxy for: decided here, on the whitelist just rendered.
        "ISOFEAT_PROBE_ALLOWED": probe_allowed,
        "ISOFEAT_PROBE_DENIED": probe_denied,
        "ISOFEAT_ALLOW_HOST_ACCESS": "1" if settings.allow_host_access else "0",
        # The credential broker runs only when a secret is bound (docs/secrets.md).
        "ISOFEAT_BROKER_SCALE": "1" if secrets.active else "0",
        "ISOFEAT_BROKER_IMAGE": layout.BROKER_IMAGE,
        "ISOFEAT_BROKER_USER": broker_container_user(environ),
        "ISOFEAT_BROKER_CONF": str(env.broker_dir),
        "ISOFEAT_TRUST_DIR": str(env.trust_dir),
        "ISOFEAT_SECRETS_ENV": str(env.secrets_env),
        "ISOFEAT_PIDS_LIMIT": str(settings.pids_limit),
        "ISOFEAT_MEM_LIMIT": settings.memory,
        "ISOFEAT_CPUS": resolve_cpus(settings.cpus, os.cpu_count()),
        # For the doctor's engine-dns check (CVE-2024-29018): the sandbox cannot ask the
        # engine. Cached by the engine socket's identity: one stat on a warm open.
        "ISOFEAT_ENGINE_VERSION": engine_version(environ),
    }
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise IsofeatError(f"{key}: a path holds a line break: {value!r}",
                               fix="move the project to a path without line breaks")
    text = "# Written by `isofeat init` on every open; do not edit (see .env.example).\n"
    text += "".join(f"{key}={_quote(value)}\n" for key, value in values.items())
    env_path = devcontainer / layout.ENV_FILE
    changed = _write_if_changed(env_path, text)
    return {
        "workspace": str(workspace),
        "env_id": env_id,
        "project": env.project,
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
        "agent_git": git.git_dir if git.git_dir_target != NO_GIT_TARGET else None,
        "agent_git_created": git.created,
        "workspace_sharing": shared,
        "secrets_bound": sorted({b.secret for b in secrets.active}),
        "broker_hosts": secrets.host_names,
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


# --- the warm path's fingerprint (quickinit.py) ---------------------------------------------


def quick_plan(workspace: Path, environ: Mapping[str, str] = os.environ) -> quickinit.Plan:
    """Everything :func:`init` reads, besides the workspace's git and the environment
    variables, which quickinit fingerprints itself. Keep it whole: a read left out here is
    a change the warm path would not see (tests/unit/test_quick_init.py)."""
    from isofeat import quickinit
    from isofeat.engine import local_socket
    from isofeat.envvars import DOCKER_CONFIG, config_dir

    env = Environment(workspace, environ)
    config = config_dir(environ)
    package = Path(__file__).parent
    docker_config = Path(environ.get(DOCKER_CONFIG) or
                         Path(environ.get("HOME", "~")).expanduser() / ".docker")
    socket = local_socket(environ)
    inputs = [str(docker_config / "config.json"), *([socket] if socket else [])]
    folders = [env.devcontainer, config, config / "secrets", package,
               *(package / sub for sub in ("whitelists", "commands", "notify"))]
    return quickinit.Plan(str(workspace), inputs, [str(f) for f in folders])


def quick_outputs(plan: quickinit.Plan, result: Mapping[str, object],
                  environ: Mapping[str, str] = os.environ) -> None:
    """Add what :func:`init` wrote (``result`` is its return value) to ``plan``."""
    from isofeat.envvars import state_dir

    env = Environment(Path(plan.workspace), environ)
    plan.outputs = [str(env.devcontainer), str(env.devcontainer / layout.ENV_FILE)]
    plan.output_folders = [str(p) for p in (
        env.state_dir, env.proxy_dir, env.dind_proxy_dir, env.broker_dir, env.trust_dir,
        state_dir(environ),
    )]
    # The agent writes its notifications there: only its identity, mode and owners count.
    plan.owned = [str(result["notify_dir"])]

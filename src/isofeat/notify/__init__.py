"""Notifications from sandboxes to the host: ``isofeat notify send`` and ``isofeat notify watch``.

Layout: the host keeps one folder per environment under :func:`notify_root`
(``$XDG_STATE_HOME/isofeat/notify/<env-id>/``). Each environment's folder is bind-mounted
into its containers at :data:`CONTAINER_NOTIFY_DIR`; ``send`` drops one JSON file there and
the host's ``watch`` shows and removes it. The folder an item sits in is its label: the
watcher never believes a label written inside a file.

This module stays import-light (no jsonschema, no watchdog): ``isofeat init`` and
``isofeat task`` use the folder helpers below, and ``send`` runs inside agent hooks.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from isofeat.envvars import notify_root
from isofeat.errors import IsofeatError

__all__ = [
    "BACKENDS",
    "CONTAINER_NOTIFY_DIR",
    "ENV_ID_RE",
    "FILE_NAME_RE",
    "HOOK_KINDS",
    "MAX_PENDING_BYTES",
    "MAX_PENDING_ENTRIES",
    "URGENCIES",
    "count_pending",
    "ensure_env_notify_dir",
    "env_notify_dir",
    "folder_usage",
    "notify_root",
    "remove_env_notify_dir",
    "validate_env_id",
]

# Closed sets shared by the CLI and the modules (kept here: importing this is cheap).
URGENCIES = ("info", "complete", "clarification", "blocked", "error")
HOOK_KINDS = ("claude", "codex")
BACKENDS = ("auto", "desktop", "stdout")

# Where the environment's folder is mounted inside its containers (ISOFEAT_NOTIFY_DIR overrides).
CONTAINER_NOTIFY_DIR = "/run/isofeat/notify"

# An environment id is a safe slug: it is used as a folder name and shown as the label.
ENV_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# Names `send` gives finished notifications: <time_ns>-<32 hex>.json. The temporary file
# starts with "." so the watcher never picks up a half-written one.
FILE_NAME_RE = re.compile(r"[0-9]{1,20}-[0-9a-f]{32}\.json")

# Folder modes: the root is private to the host user; an environment's folder must also be
# writable by the sandbox user (uid 1001, group dev) through the bind mount.
ROOT_MODE = 0o700
ENV_DIR_MODE = 0o770

# Bounds on one environment's folder (docs/notifications.md, "Bounds"). The host folder is
# written by the sandbox and lives on the host's disk, so it must not grow without end:
# `send` refuses to add a file when the folder already holds MAX_PENDING_ENTRIES entries or
# MAX_PENDING_BYTES bytes, and the watcher drops (counted, unread) the finished files past
# the oldest MAX_PENDING_ENTRIES in each pass. 100 is ten minutes of the rate limit.
MAX_PENDING_ENTRIES = 100
MAX_PENDING_BYTES = 1024 * 1024
# A sender's temporary file (".<name>.<pid>.*.tmp") lives milliseconds; a hidden file older
# than this, by its ctime (which the sandbox cannot set back), is a leftover or junk.
STALE_HIDDEN_SECONDS = 60.0


def validate_env_id(env_id: str) -> str:
    """Return ``env_id`` if it is a safe slug, else raise :class:`IsofeatError` (exit 2)."""
    if not ENV_ID_RE.fullmatch(env_id):
        raise IsofeatError(
            f"bad environment id {env_id!r}: it names a folder and labels notifications",
            fix="use 1-63 characters from a-z, 0-9 and '-', starting with a letter or digit",
        )
    return env_id


def env_notify_dir(env_id: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The host folder for one environment's notifications (not created)."""
    return notify_root(environ) / validate_env_id(env_id)


def ensure_env_notify_dir(
    env_id: str,
    environ: Mapping[str, str] = os.environ,
    *,
    mode: int = ENV_DIR_MODE,
    gid: int | None = None,
) -> Path:
    """Create (or repair the mode of) one environment's folder and return it.

    ``gid``: give the folder to this group (e.g. the sandbox's ``dev`` group, 2000) so the
    container user can write into it on Linux hosts where uids are not remapped. Idempotent.
    Refuses a folder that is a symlink: it would let the watcher's label point elsewhere.
    """
    path = env_notify_dir(env_id, environ)
    root = path.parent
    root.mkdir(mode=ROOT_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise IsofeatError(
            f"{path} exists but is not a real folder (a symlink or a file)",
            fix=f"remove {path} and run the command again",
        )
    if gid is not None and st.st_gid != gid:
        os.chown(path, -1, gid)
    # mkdir's mode is filtered by the umask; set it exactly.
    os.chmod(path, mode)
    return path


def remove_env_notify_dir(env_id: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Remove one environment's folder and everything in it; ``False`` if it was absent.

    A symlink in its place is removed as a link; its target is never touched.
    """
    path = env_notify_dir(env_id, environ)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        # The sandbox filled it: fd-based, no link followed, any depth (shutil.rmtree
        # recurses and fails on a tree a few thousand folders deep). Only `task rm` gets here.
        from isofeat.notify.tree import remove_folder

        root_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            remove_folder(root_fd, path.name)
        finally:
            os.close(root_fd)
    else:
        path.unlink()
    return True


def count_pending(env_id: str, environ: Mapping[str, str] = os.environ) -> int:
    """How many finished notifications wait in one environment's folder (for ``task list``)."""
    path = env_notify_dir(env_id, environ)
    try:
        if not stat.S_ISDIR(path.lstat().st_mode):
            return 0
        return sum(
            1
            for entry in os.scandir(path)
            if FILE_NAME_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
        )
    except FileNotFoundError:
        return 0


def folder_usage(directory: Path, *, limit: int = MAX_PENDING_ENTRIES) -> tuple[int, int]:
    """``(entries, bytes)`` in one notification folder, counting stops past ``limit`` entries.

    Every entry counts, whatever its kind or name: the bound is on what the sandbox leaves on
    the host's disk. Sizes are ``lstat`` sizes (a symlink is never followed).
    """
    entries = size = 0
    with os.scandir(directory) as found:
        for entry in found:
            entries += 1
            with contextlib.suppress(OSError):
                size += entry.stat(follow_symlinks=False).st_size
            if entries > limit:
                break
    return entries, size

"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write that is SIGKILLed between creating its temporary file and the rename leaves that
file behind (no ``finally`` runs). Temporary names therefore carry the writer's pid
(``.<name>.<pid>.<random>.tmp``), and every later write of the same file, changed or not,
removes the ones whose writer is gone (:func:`remove_leftovers`): the next ``isofeat init``
repairs what a killed one left, without touching a temporary file another live process is
still writing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists here (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: Path, prefix: str, suffix: str = ".tmp") -> list[str]:
    """Remove ``<prefix><pid><rest><suffix>`` entries of ``folder`` whose pid is gone.

    Returns the names removed. A folder among them (a half-made repository) goes with
    ``shutil.rmtree``, which does not follow symlinks. Names without a pid right after the
    prefix are not ours and stay.
    """
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        digits = name[len(prefix):].split(".", 1)[0]
        if not digits.isdigit() or pid_alive(int(digits)):
            continue
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                import shutil

                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            # Gone already, or a dead run's orphaned child is still writing into it: the
            # next run takes it.
            continue
        removed.append(name)
    return removed


def temp_prefix(path: Path) -> str:
    """The start of every temporary name :func:`write_text` uses for ``path``."""
    return f".{path.name}."


def write_text(
    path: Path, text: str, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    ``owner`` (uid, gid) is set before the rename too: a reader that may read only as that
    owner (the proxy, on a 0600 file) never meets the new file unreadable.
    """
    import tempfile  # a costly import: only when something is written

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, temp_prefix(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f"{temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        # Leave nothing half-written behind, whatever went wrong.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_text(
    path: Path, text: str, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    ``owner`` (uid, gid) is set before the rename too: a reader that may read only as that
    owner (the proxy, on a 0600 file) never meets the new file unreadable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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

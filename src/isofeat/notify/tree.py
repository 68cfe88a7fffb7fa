"""Removing folders a sandbox made, safely: fd-based, no link followed, any depth.

Used by the watcher (folders inside an environment's notification folder) and by
``isofeat task rm`` (the whole folder). Imports nothing from isofeat, so both may use it.
"""

from __future__ import annotations

import os
import stat

# Work bounds for removing a folder a sandbox made: open folders held at once, and entries
# removed per pass (the rest goes in the next pass, so one huge tree cannot stall the others).
MAX_TREE_DEPTH = 32
MAX_TREE_REMOVALS = 10_000

_DIR_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_DIRECTORY
              | getattr(os, "O_CLOEXEC", 0))


def remove_tree(
    env_fd: int, name: str, budget: int = MAX_TREE_REMOVALS, moved: list[str] | None = None
) -> bool:
    """Remove the folder ``name`` in ``env_fd`` and all it holds; ``True`` when it is gone.

    A sandbox made it, so: every open is relative to the parent's fd with ``O_NOFOLLOW`` and
    ``O_DIRECTORY`` (a symlink inside is unlinked as a link, never entered, so nothing
    outside the folder is touched); at most :data:`MAX_TREE_DEPTH` folders are open at once,
    and a folder deeper than that is moved up into ``env_fd`` under a hidden name and
    removed later (a tree of any depth goes, without recursion or fd exhaustion); at most
    ``budget`` entries go per call, and the next pass goes on. ``moved`` collects the hidden
    names of the folders moved up.
    """
    from secrets import token_hex

    stack = [(env_fd, name, os.open(name, _DIR_FLAGS, dir_fd=env_fd))]
    try:
        while stack and budget > 0:
            parent_fd, folder, fd = stack[-1]
            child = None
            for entry in os.listdir(fd):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(entry, dir_fd=fd)
                    budget -= 1
                elif len(stack) < MAX_TREE_DEPTH:
                    child = entry
                    break
                else:
                    hidden = f".isofeat-rm-{token_hex(8)}"
                    os.rename(entry, hidden, src_dir_fd=fd, dst_dir_fd=env_fd)
                    if moved is not None:
                        moved.append(hidden)
                if budget <= 0:
                    return False
            if child is not None:
                stack.append((fd, child, os.open(child, _DIR_FLAGS, dir_fd=fd)))
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(folder, dir_fd=parent_fd)
            budget -= 1
        return not stack
    finally:
        for _, _, fd in stack:
            os.close(fd)


def remove_folder(parent_fd: int, name: str) -> None:
    """Remove the folder ``name`` in ``parent_fd`` whole, however deep (``isofeat task rm``).

    The same safe walk as :func:`remove_tree`, repeated until nothing is left, the folders
    it moved up included. Meant for a folder no sandbox writes any more.
    """
    todo = [name]
    while todo:
        current = todo.pop()
        moved: list[str] = []
        try:
            while not remove_tree(parent_fd, current, moved=moved):
                pass
        except FileNotFoundError:
            pass
        todo += moved

"""argparse ``type=`` checks shared by the verbs: bad values fail at parse time, exit 2.

An empty string is the case they exist for: ``Path("")`` is ``.``, so ``--out ""`` would
write into the current folder and ``--container ""`` would quietly read stdin instead.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def text(value: str) -> str:
    """A non-empty value (a container or project name, a URL)."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is empty; give a value")
    if "\x00" in value:
        # No path or name can hold one; the OS would raise ValueError deep in a verb.
        raise argparse.ArgumentTypeError(f"{value!r} holds a NUL byte")
    return value


def path(value: str) -> Path:
    """A non-empty path; whether it must exist is the verb's to say."""
    return Path(text(value))


def folder(value: str) -> Path:
    """A path that is a folder, or does not exist yet (the verb creates it)."""
    result = path(value)
    if result.exists() and not result.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} exists and is not a folder")
    return result


def seconds(value: str) -> float:
    """A finite number of seconds from 0 to 600."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(number) or not 0 <= number <= 600:
        raise argparse.ArgumentTypeError(f"{value!r}: give 0 to 600 seconds")
    return number


def owner(value: str) -> tuple[int, int]:
    """``UID[:GID]`` as numbers (GID defaults to UID): who may read a private render."""
    uid_text, _, gid_text = value.partition(":")
    gid_text = gid_text or uid_text
    if not (uid_text.isascii() and uid_text.isdigit() and gid_text.isascii()
            and gid_text.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r} is not UID[:GID] in numbers, e.g. 2888:2888")
    uid, gid = int(uid_text), int(gid_text)
    if uid == 0 or gid == 0 or uid > 2**31 or gid > 2**31:
        # Root needs no file to be readable by it; the proxy must not run as root.
        raise argparse.ArgumentTypeError(f"{value!r}: give a non-root uid and gid below 2^31")
    return uid, gid

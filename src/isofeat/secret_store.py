"""The user's credentials, on the host only: the OS keyring where one exists, else a 0600 file.

``isofeat secrets set|list|rm`` write here; ``isofeat init`` reads here when an environment
has bindings (docs/secrets.md). Nothing in this module ever prints a value.

Two files live in ``<config>/secrets/`` (0700):

* ``index.json``: the names that are set and where each is kept (no values). ``init`` reads
  it on every open with the standard library alone, so an environment without secrets never
  imports ``keyring``;
* ``values.json`` (0600): the values of the names kept in the file backend.

Standard library only at import time; ``keyring`` is imported when a value is read or written.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from isofeat.envvars import ISOFEAT_SECRETS_BACKEND, config_dir
from isofeat.errors import IsofeatError

#: The keyring "service" every isofeat secret is kept under.
KEYRING_SERVICE = "isofeat"
BACKENDS = ("keyring", "file")
NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
MAX_VALUE = 8192


def secrets_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return config_dir(environ) / "secrets"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise IsofeatError(
            f"{name!r} is not a secret name",
            fix="use upper-case letters, digits and _ (like ANTHROPIC_API_KEY), at most 64",
        )
    return name


def check_value(name: str, value: str) -> str:
    """A value the broker can put in an HTTP header: printable, one line, not empty."""
    if not value:
        raise IsofeatError(f"{name}: the value is empty", fix="paste the value on stdin")
    if len(value) > MAX_VALUE:
        raise IsofeatError(f"{name}: the value is longer than {MAX_VALUE} characters",
                           fix="check what was pasted")
    if not all(ch.isprintable() and ord(ch) < 0x7F for ch in value):
        # Never quote the value: the message would print the secret.
        raise IsofeatError(f"{name}: the value holds a control, space-like or non-ASCII "
                           "character; an HTTP header cannot carry it",
                           fix="paste the token alone, without quotes or line breaks")
    return value


class Store:
    """The index, the file backend and (lazily) the keyring, for one config folder."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.environ = environ
        self.folder = secrets_dir(environ)
        self.index_path = self.folder / "index.json"
        self.values_path = self.folder / "values.json"

    # --- the index (cheap; init reads only this when nothing is set) -------------------

    def index(self) -> dict[str, str]:
        """``{name: backend}`` of every secret that is set."""
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IsofeatError(f"{self.index_path}: unreadable ({err})",
                               fix="remove it and set the secrets again") from None
        found = data.get("secrets", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in found.items() if v in BACKENDS}

    def _write_json(self, path: Path, data: object) -> None:
        from isofeat.atomic import write_text

        self._private_folder()
        write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=0o600)

    def _private_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.folder)
        if not stat.S_ISDIR(st.st_mode):
            raise IsofeatError(f"{self.folder} is not a folder", fix="remove it")
        if st.st_uid != os.getuid():
            raise IsofeatError(f"{self.folder} belongs to uid {st.st_uid}, not to you",
                               fix="remove it, or run as its owner; it holds your secrets")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.folder, 0o700)

    # --- backends ------------------------------------------------------------------------

    def backend(self) -> str:
        """Where a new value goes: ``$ISOFEAT_SECRETS_BACKEND``, else the keyring when it has
        a real backend (Secret Service, macOS Keychain, Windows), else the file."""
        forced = self.environ.get(ISOFEAT_SECRETS_BACKEND, "")
        if forced:
            if forced not in BACKENDS:
                raise IsofeatError(f"{ISOFEAT_SECRETS_BACKEND}={forced!r} is not a backend",
                                   fix=f"use one of: {', '.join(BACKENDS)}")
            return forced
        return "keyring" if keyring_usable() else "file"

    def _file_values(self) -> dict[str, str]:
        try:
            st = os.stat(self.values_path)
        except FileNotFoundError:
            return {}
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise IsofeatError(
                f"{self.values_path} is readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):o})",
                fix=f"chmod 600 {self.values_path}, and change the secrets it holds")
        data = json.loads(self.values_path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()}

    # --- the verbs -----------------------------------------------------------------------

    def set(self, name: str, value: str) -> str:
        check_name(name)
        check_value(name, value)
        backend = self.backend()
        index = self.index()
        old = index.get(name)
        if backend == "keyring":
            import keyring

            keyring.set_password(KEYRING_SERVICE, name, value)
        else:
            values = self._file_values()
            values[name] = value
            self._write_json(self.values_path, values)
        if old is not None and old != backend:
            self._forget(name, old)
        index[name] = backend
        self._write_json(self.index_path, {"version": 1, "secrets": index})
        return backend

    def get_many(self, names: list[str]) -> dict[str, str]:
        """Values of ``names`` (each must be set); the keyring is imported only if needed."""
        index = self.index()
        missing = [n for n in names if n not in index]
        if missing:
            raise IsofeatError(f"secret(s) not set: {', '.join(missing)}",
                               fix=f"isofeat secrets set {missing[0]}")
        found: dict[str, str] = {}
        file_values = self._file_values() if any(index[n] == "file" for n in names) else {}
        for name in names:
            if index[name] == "file":
                value = file_values.get(name)
            else:
                import keyring

                value = keyring.get_password(KEYRING_SERVICE, name)
            if value is None:
                raise IsofeatError(f"secret {name} is listed but its {index[name]} holds no "
                                   "value", fix=f"isofeat secrets set {name}")
            found[name] = value
        return found

    def remove(self, name: str) -> bool:
        check_name(name)
        index = self.index()
        backend = index.pop(name, None)
        if backend is None:
            return False
        self._forget(name, backend)
        self._write_json(self.index_path, {"version": 1, "secrets": index})
        return True

    def _forget(self, name: str, backend: str) -> None:
        if backend == "file":
            values = self._file_values()
            if values.pop(name, None) is not None:
                self._write_json(self.values_path, values)
        else:
            import contextlib

            import keyring
            from keyring.errors import PasswordDeleteError

            # Already gone from the keyring: the index entry was all that remained.
            with contextlib.suppress(PasswordDeleteError):
                keyring.delete_password(KEYRING_SERVICE, name)


def keyring_usable() -> bool:
    """True when ``keyring`` has an OS keyring (Secret Service, KWallet, macOS Keychain,
    Windows Credential Locker): keyring rates those 1 or more. ``fail``/``null`` rate 0 or
    less, and keyrings.alt's plain and encrypted files 0.5 and 0.6: a file for a file, ours
    is the one whose mode isofeat checks, so those do not count."""
    try:
        import keyring
        from keyring.backends import chainer, fail
    except ImportError:
        return False
    try:
        ring = keyring.get_keyring()
    except Exception:  # a broken backend configuration: fall back to the file
        return False
    if isinstance(ring, fail.Keyring):
        return False
    rings = ring.backends if isinstance(ring, chainer.ChainerBackend) else [ring]
    return any(float(getattr(r, "priority", 0)) >= 1 for r in rings)

"""The warm ``isofeat init``: answered from a stamp when nothing it reads or writes changed.

``isofeat init`` runs on every open of a container (devcontainer.json's initializeCommand).
On a warm open it finds everything as it left it and changes nothing, but it still pays for
imports (argparse, pathlib, re, json, hashlib: about 50 ms, twice a bare interpreter's
start-up). This module lets it skip that safely:

* After each full run, :func:`record` writes a stamp with a *fingerprint* of everything the
  run read (taken before the run) and everything it wrote (taken after). A fingerprint is
  the ``lstat`` of each file and folder (inode, mode, owner, group, size, mtime and ctime
  in nanoseconds), the listing of each folder, the relevant environment variables, the user
  and groups, the interpreter, and isofeat's own installed files.
* :func:`unchanged_since_last_open`, called by the ``isofeat`` command before argparse is
  even imported, recomputes both fingerprints. Equal, and the stamp younger than a day: the
  full run would change nothing, so the stamp's message is printed instead. Any difference,
  a missing or unreadable stamp, or any error means a full run.

Why this is safe: every input of ``init`` is in the fingerprint, so a change to any of them
(a whitelist line, isofeat.json, a global setting, a secret set with ``isofeat secrets set``,
``.git`` replaced by a link, an environment variable, an upgrade of isofeat) fails the
comparison; and every output is too, so a render deleted, edited or chmodded by anyone, or a
hand-edited ``.env``, brings the full run back to repair it. ctime cannot be set from user
space, so a change that restores mtime still shows. tests/unit/test_quick_init.py changes
each input and output in turn and checks that the next open is a full run.

What it cannot see: a secret's value changed in the OS keyring by another tool than
``isofeat secrets set`` (which rewrites the index it fingerprints). The stamp's one-day limit
bounds that. Standard library only, and only ``os``, ``sys`` and ``binascii``: the point is
to import nothing.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs an import; see cli.py
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

STAMP_MAGIC = "isofeat-quick-init 1"
#: A stamp older than this is ignored: at least one full run a day, whatever the fingerprint.
MAX_AGE_S = 24 * 3600
#: Environment variables that can change what ``init`` does (names, or prefixes ending "_").
RELEVANT_ENV = ("ISOFEAT_", "XDG_", "DOCKER_", "HOME", "PATH", "USER", "LOGNAME", "TMPDIR")
#: What the fast path adds to the usual message, so that a user (and the tests) can tell.
QUICK_NOTE = " (nothing changed since the last open)"
SEP = "\0"


def state_root(environ: Mapping[str, str]) -> str:
    """``$XDG_STATE_HOME/isofeat``: the rule of envvars.state_dir, without pathlib (a test
    ties the two together)."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser(environ.get("HOME", "~")), ".local", "state")
    return os.path.join(base, "isofeat")


def stamp_path(workspace: str, environ: Mapping[str, str]) -> str:
    import binascii

    # A short name from the real path; the stamp holds the path itself, which is compared.
    crc = binascii.crc32(workspace.encode("utf-8", "surrogateescape"))
    return os.path.join(state_root(environ), "quick-init", f"{crc:08x}.stamp")


def _sig(path: str) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return "-"
    return (f"{st.st_ino}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}:{st.st_size}:"
            f"{st.st_mtime_ns}:{st.st_ctime_ns}")


def _owner_sig(path: str) -> str:
    """A workspace's identity and sharing, not its mtime (the agent writes there all day)."""
    try:
        st = os.lstat(path)
    except OSError:
        return "-"
    return f"{st.st_ino}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}"


def _git_sigs(workspace: str) -> list[str]:
    """What hostgit.verify looks at, found the way it finds it (nothing is trusted here:
    a difference only sends the next open to the full run, which verifies)."""
    import stat  # already loaded by os: free

    dot = os.path.join(workspace, ".git")
    found = [f"git={_sig(dot)}"]
    # Never follow a link, never block on a FIFO put in its place: open it as it is.
    try:
        fd = os.open(dot, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return found
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return [*found, f"commondir={_sig(os.path.join(dot, 'commondir'))}"]
        pointer = os.read(fd, 4097)
    except OSError:
        return found
    finally:
        os.close(fd)
    found.append(f"pointer={pointer!r}")
    text = pointer.decode("utf-8", "replace").strip()
    if text.startswith("gitdir:"):
        target = text.split(":", 1)[1].strip()
        gitdir = os.path.realpath(os.path.join(workspace, target))
        main = os.path.dirname(os.path.dirname(gitdir))
        for path in (gitdir, os.path.join(gitdir, "gitdir"), os.path.join(gitdir, "commondir"),
                     main, os.path.join(main, "commondir")):
            found.append(f"{path}={_sig(path)}")
    return found


def _skipped(name: str) -> bool:
    # ".env" and its temporary names ("..env.<pid>...") are outputs, in an input folder; the
    # stamps' own folder changes with every stamp written; Python writes bytecode caches
    # into the package's folders as it imports (their sources are fingerprinted).
    return name in (".env", "quick-init", "__pycache__") or name.startswith("..env.")


def _listing(folder: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(folder) if not _skipped(n))
    except OSError:
        return [f"{folder}/=-"]
    return [f"{folder}/={'/'.join(names)}",
            *(f"{folder}/{n}={_sig(os.path.join(folder, n))}" for n in names)]


def fingerprint(stats: Iterable[str], folders: Iterable[str], owned: Iterable[str] = (), *,
                workspace: str | None = None,
                environ: Mapping[str, str] | None = None) -> str:
    """One line: the state of ``stats`` (lstat), ``folders`` (listing and each entry's
    lstat), ``owned`` (identity, mode and owners only) and, when given, the workspace's git
    and sharing and the process's environment and identity."""
    parts: list[str] = []
    if environ is not None:
        parts += [sys.executable, sys.version, str(os.cpu_count()),
                  repr((os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))),
                  repr(sorted((k, v) for k, v in environ.items()
                              if k.startswith(RELEVANT_ENV)))]
    if workspace is not None:
        parts += [f"workspace={_owner_sig(workspace)}", *_git_sigs(workspace)]
    parts += [f"{p}={_sig(p)}" for p in stats]
    parts += [f"{p}~{_owner_sig(p)}" for p in owned]
    for folder in folders:
        parts += _listing(folder)
    return repr(parts)


class Plan:
    """What one workspace's fingerprints cover (built by the full run, which knows the
    layout; stored in the stamp so that the fast path needs no layout of its own)."""

    def __init__(self, workspace: str, inputs: list[str], input_folders: list[str],
                 outputs: list[str] | None = None, output_folders: list[str] | None = None,
                 owned: list[str] | None = None) -> None:
        self.workspace = workspace
        self.inputs, self.input_folders = inputs, input_folders
        self.outputs, self.output_folders = outputs or [], output_folders or []
        self.owned = owned or []

    def inputs_now(self, environ: Mapping[str, str]) -> str:
        return fingerprint(self.inputs, self.input_folders, workspace=self.workspace,
                           environ=environ)

    def outputs_now(self) -> str:
        return fingerprint(self.outputs, self.output_folders, self.owned)

    def fields(self) -> list[str]:
        return [SEP.join(x) for x in (self.inputs, self.input_folders, self.outputs,
                                      self.output_folders, self.owned)]


def record(plan: Plan, inputs_before: str, message: str,
           environ: Mapping[str, str]) -> None:
    """Write the stamp after a full run: the inputs as they were when it started, the outputs
    as it left them, and the message to repeat."""
    fields = [plan.workspace, message, *plan.fields()]
    if any("\n" in f for f in fields) or SEP in message:
        return  # a path with a line break: init refuses those anyway
    path = stamp_path(plan.workspace, environ)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    text = "\n".join([STAMP_MAGIC, *fields, inputs_before, plan.outputs_now()]) + "\n"
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def forget(workspace: str, environ: Mapping[str, str]) -> None:
    """Drop the stamp (a run that did less than a plain ``isofeat init`` would)."""
    import contextlib  # not on the fast path

    with contextlib.suppress(FileNotFoundError):
        os.unlink(stamp_path(workspace, environ))


def _split(field: str) -> list[str]:
    return field.split(SEP) if field else []


def unchanged_since_last_open(environ: Mapping[str, str] | None = None,
                              cwd: str | None = None) -> str | None:
    """The message of the last full run, when nothing has changed since; else None."""
    import time

    environ = os.environ if environ is None else environ
    if environ.get("ISOFEAT_NO_QUICK_INIT") == "1":
        return None
    try:
        workspace = os.path.realpath(cwd or os.getcwd())
        path = stamp_path(workspace, environ)
        st = os.lstat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or \
                time.time() - st.st_mtime > MAX_AGE_S:
            return None
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        if len(lines) != 11 or lines[0] != STAMP_MAGIC or lines[1] != workspace:
            return None
        plan = Plan(workspace, *(_split(line) for line in lines[3:8]))
        if plan.inputs_now(environ) != lines[8] or plan.outputs_now() != lines[9]:
            return None
        return lines[2] + QUICK_NOTE
    except (OSError, ValueError, UnicodeError):
        return None

"""``isofeat notify watch``: show and remove notifications from every environment's folder.

The folders are written by sandboxes, so everything in them is hostile (security case 16):

* Only names are trusted that the watcher checks itself. The label is the environment
  folder's name (a safe slug); nothing inside a file can change it.
* Every open is relative to a directory fd with ``O_NOFOLLOW``: environment folders that
  are symlinks are skipped, files that are symlinks are unlinked as links (the target is
  never opened, read or removed). Files are opened ``O_NONBLOCK`` so a FIFO cannot hang the
  watcher, and ``fstat`` on the open fd decides: only regular files are read.
* At most ``MAX_FILE_BYTES + 1`` bytes are read; bigger files are rejected.
* The content is validated against the JSON schema, then every displayed field is cleaned
  of escape sequences and control characters. Desktop tools get list arguments, no shell.
* Each environment has a token bucket (10 per minute): the rest is dropped and counted, and
  one summary line per environment reports the drops.
* Folders inside an environment folder are removed without following a link (fd-based,
  bounded depth and work per pass); hidden files older than a minute are removed; finished
  files past the folder bound (100) are dropped unread and counted.
* Nothing lost across a crash: a notification is recorded in a host-private journal before
  its file is removed, and marked done once shown; a restarted watcher shows what the
  journal holds but never marked done, marked as a possible repeat (see :class:`Journal`).

watchdog (imported only in :func:`watch`) tells the loop that something changed; the loop
then rescans. A slow periodic rescan covers file systems that deliver no events.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

from isofeat.errors import IsofeatError
from isofeat.notify import (
    ENV_ID_RE,
    FILE_NAME_RE,
    MAX_PENDING_ENTRIES,
    ROOT_MODE,
    STALE_HIDDEN_SECONDS,
)
from isofeat.notify.backends import Display, Shown
from isofeat.notify.message import MAX_FILE_BYTES, InvalidNotification, validate
from isofeat.notify.tree import remove_tree

RATE_PER_MINUTE = 10
SUMMARY_INTERVAL_SECONDS = 60.0
RESCAN_SECONDS = 10.0
# Long enough for the events of one sender's write-and-rename to arrive together, short
# enough not to be the latency users feel: at 0.1 s it was the whole p95 (105 ms,
# docs/performance.md). A burst still costs one scan per 20 ms at most, and a scan handles
# at most MAX_PENDING_ENTRIES entries of each environment.
DEBOUNCE_SECONDS = 0.02
# Bound on remembered "left alone" items, so a sandbox creating folders without end cannot
# grow the watcher's memory; past it, further such items are skipped silently.
MAX_REPORTED = 10_000
# In the root (0700, never mounted into a container), hidden so it is not an environment.
JOURNAL_NAME = ".watch-journal"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_DIRECTORY | _O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    dropped: int = 0
    last_summary: float = float("-inf")


@dataclass
class RateLimiter:
    """A token bucket per environment: ``rate`` items per minute, bursts up to ``rate``."""

    rate: int = RATE_PER_MINUTE
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, env: str) -> bool:
        now = self.clock()
        bucket = self.buckets.setdefault(env, _Bucket(tokens=float(self.rate), stamp=now))
        bucket.tokens = min(float(self.rate), bucket.tokens + (now - bucket.stamp) * self.rate / 60)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        bucket.dropped += 1
        return False

    def summaries(self, *, force: bool = False) -> Iterator[tuple[str, int]]:
        """Yield ``(env, dropped)`` once per environment per summary interval (or now)."""
        now = self.clock()
        for env, bucket in sorted(self.buckets.items()):
            if bucket.dropped and (force or now - bucket.last_summary >= SUMMARY_INTERVAL_SECONDS):
                yield env, bucket.dropped
                bucket.dropped = 0
                bucket.last_summary = now


class Journal:
    """What was taken out of a folder but is not known to be shown: survives a SIGKILL.

    Without it, a watcher killed between showing a notification and removing its file shows
    it again after a restart, and one killed between removing and showing loses it. The order
    per notification is: append ``claim`` (env, name, the validated bytes) here, remove the
    file, show, append ``done``. A restarted watcher first shows every claim without a
    ``done`` (and removes its file if the kill came before the removal), so nothing is lost.
    ``done`` is written as soon as showing cannot be undone: the line printed, or the desktop
    tool started (it outlives the watcher). Showing and ``done`` are two writes to two files,
    and no process can make them one step, so a kill between them repeats that notification:
    for stdout, the time until the next write(2), which the interpreter's other threads and
    the scheduler stretch (making the record's bytes beforehand did not shorten it
    measurably, docs/notifications.md); the milliseconds Popen takes to start notify-send. The
    restarted watcher marks what it shows from the journal (``Shown.recovered``), so a repeat
    says that it may be one and a script can drop it by its ``id``. The journal lives
    in the root, which is 0700 and never mounted into a sandbox, so only the host user
    writes it. It is emptied whenever nothing is open, and removed when the watcher stops.
    An exclusive ``flock`` on it also keeps a second watcher on the same root from showing
    the same files.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / JOURNAL_NAME
        self.fd: int | None = None
        self.open_claims = 0

    def open(self) -> None:
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | _O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise IsofeatError(
                f"another `isofeat notify watch` is running on {self.path.parent}",
                fix="use that one (one watcher per user), or stop it first",
            ) from None

    def pending(self) -> list[tuple[str, str, bytes]]:
        """``(env, name, data)`` claimed and never marked done, oldest first."""
        assert self.fd is not None
        os.lseek(self.fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self.fd, 1 << 20):
            chunks.append(chunk)
        claims: dict[str, tuple[str, str, bytes]] = {}
        for line in b"".join(chunks).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill: its claim was never complete
            if "done" in record:
                claims.pop(record["done"], None)
            elif "claim" in record:
                claims[record["claim"]] = (
                    record["env"], record["name"], record["data"].encode("utf-8"))
        return list(claims.values())

    def claim(self, env: str, name: str, data: bytes) -> None:
        # One write(2) per record (O_APPEND): a SIGKILL cannot interleave half of one. No
        # fsync: the page cache survives the process; a power cut loses the display anyway.
        record = {"claim": f"{env}/{name}", "env": env, "name": name,
                  "data": data.decode("utf-8")}
        self._append(record)
        self.open_claims += 1

    def done(self, env: str, name: str) -> None:
        self._append({"done": f"{env}/{name}"})
        self.open_claims -= 1

    def _append(self, record: dict[str, str]) -> None:
        if self.fd is not None:
            os.write(self.fd, json.dumps(record).encode() + b"\n")

    def compact(self) -> None:
        """Empty the journal when every claim is done, so it never grows."""
        if self.fd is not None and self.open_claims <= 0:
            os.ftruncate(self.fd, 0)
            self.open_claims = 0

    def close(self) -> None:
        if self.fd is None:
            return
        if self.open_claims <= 0:
            with suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


class Processor:
    """One pass over the root: show, reject and remove what the folders hold."""

    def __init__(
        self,
        root: Path,
        display: Display,
        *,
        as_json: bool = False,
        limiter: RateLimiter | None = None,
        journal: Journal | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.root = root
        self.journal = journal or Journal(root)
        self.display = display
        self.as_json = as_json
        self.limiter = limiter or RateLimiter()
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.shown = 0
        self.rejected = 0
        # Finished files dropped unread because the folder held more than the bound.
        self.over_bound: dict[str, int] = {}
        self._over_bound_said = float("-inf")
        # Things left in place (folders, symlinked env folders) are reported once, not per scan.
        self._reported: set[tuple[str, str]] = set()

    # -- reporting -------------------------------------------------------------------------
    def _warn(self, env: str, name: str, reason: str) -> None:
        # ascii() quotes and escapes every non-printable character of the hostile name.
        print(
            f"isofeat notify: warning: [{env}] {ascii(name)[:90]}: {reason}",
            file=self.err,
            flush=True,
        )

    def _warn_once(self, env: str, name: str, reason: str) -> None:
        if (env, name) not in self._reported and len(self._reported) < MAX_REPORTED:
            self._reported.add((env, name))
            self._warn(env, name, reason)

    def flush_summaries(self, *, force: bool = False) -> None:
        for env, dropped in self.limiter.summaries(force=force):
            print(
                f"isofeat notify: [{env}] dropped {dropped} notification(s): rate limit is "
                f"{self.limiter.rate} per minute per environment",
                file=self.err,
                flush=True,
            )
        now = time.monotonic()
        if self.over_bound and (force or now - self._over_bound_said >= SUMMARY_INTERVAL_SECONDS):
            for env, dropped in sorted(self.over_bound.items()):
                print(
                    f"isofeat notify: [{env}] dropped {dropped} notification(s): the folder "
                    f"held more than {MAX_PENDING_ENTRIES}",
                    file=self.err,
                    flush=True,
                )
            self.over_bound.clear()
            self._over_bound_said = now

    # -- crash recovery --------------------------------------------------------------------
    def recover(self) -> None:
        """Open the journal and show what a killed watcher took but did not finish."""
        if not self.root.is_dir():
            return  # --once on a missing root creates nothing
        self.journal.open()
        left = self.journal.pending()
        self.journal.open_claims = len(left)
        envs = dict(self._open_envs_list())
        try:
            for env, name, data in left:
                if env in envs:  # killed before the removal: the file is still there
                    self._remove(env, envs[env], name)
                try:
                    note = validate(data)
                except InvalidNotification:
                    pass  # cannot happen: it was validated before it was claimed
                else:
                    self._show(Shown(env=env, note=note, recovered=True),
                               partial(self.journal.done, env, name))
                    continue
                self.journal.done(env, name)
        finally:
            for fd in envs.values():
                os.close(fd)
        self.journal.compact()

    def _open_envs_list(self) -> list[tuple[str, int]]:
        """Like :meth:`_open_envs`, with the fds kept open (the caller closes them)."""
        opened: list[tuple[str, int]] = []
        for env, fd in self._open_envs():
            opened.append((env, os.dup(fd)))
        return opened

    # -- scanning --------------------------------------------------------------------------
    def env_names(self) -> list[str]:
        """The environment folders under the root that are real folders with a valid name."""
        return [name for name, _fd in self._open_envs()]

    def _open_envs(self) -> Iterator[tuple[str, int]]:
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            for name in sorted(os.listdir(root_fd)):
                if name.startswith("."):
                    continue
                if not ENV_ID_RE.fullmatch(name):
                    self._warn_once("-", name, "not an environment id; left alone")
                    continue
                try:
                    env_fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
                except OSError as problem:
                    if problem.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        self._warn_once(
                            name,
                            ".",
                            "environment folder is not a real folder "
                            "(a symlink?); skipped, never followed",
                        )
                    elif problem.errno != errno.ENOENT:
                        self._warn_once(name, ".", f"cannot open ({problem.strerror})")
                    continue
                try:
                    yield name, env_fd
                finally:
                    os.close(env_fd)
        finally:
            os.close(root_fd)

    def scan(self) -> None:
        for env, env_fd in self._open_envs():
            self._scan_env(env, env_fd)
        self.journal.compact()

    def _scan_env(self, env: str, env_fd: int) -> None:
        try:
            names = sorted(os.listdir(env_fd), key=_oldest_first)
        except OSError as problem:
            self._warn_once(env, ".", f"cannot list ({problem.strerror})")
            return
        finished = []
        for name in names:
            if name.startswith("."):
                self._sweep_hidden(env, env_fd, name)
            else:
                finished.append(name)
        # The bound: the oldest MAX_PENDING_ENTRIES are handled, the rest dropped unread.
        for name in finished[MAX_PENDING_ENTRIES:]:
            self.over_bound[env] = self.over_bound.get(env, 0) + 1
            self._remove_any(env, env_fd, name)
        for name in finished[:MAX_PENDING_ENTRIES]:
            self._handle(env, env_fd, name)

    def _sweep_hidden(self, env: str, env_fd: int, name: str) -> None:
        """A hidden entry is a sender's temporary file while it is young; else it goes.

        Age is by ctime, which the sandbox cannot set back (it can set mtime). A folder is
        never a sender's file, so a hidden folder goes at once.
        """
        try:
            st = os.stat(name, dir_fd=env_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode) or time.time() - st.st_ctime > STALE_HIDDEN_SECONDS:
            self._remove_any(env, env_fd, name)

    def _remove_any(self, env: str, env_fd: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=env_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            self._remove(env, env_fd, name)
            return
        try:
            remove_tree(env_fd, name)  # not done yet: the next pass goes on
        except FileNotFoundError:
            pass
        except OSError as problem:
            self._warn_once(env, name, f"cannot remove this folder ({problem.strerror})")

    def _remove(self, env: str, env_fd: int, name: str) -> None:
        # Removes the directory entry itself: for a symlink, the link, never its target.
        try:
            os.unlink(name, dir_fd=env_fd)
        except FileNotFoundError:
            pass
        except OSError as problem:
            self._warn_once(env, name, f"cannot remove ({problem.strerror})")

    def _reject(self, env: str, env_fd: int, name: str, reason: str) -> None:
        self.rejected += 1
        self._warn(env, name, f"{reason}; removed")
        self._remove(env, env_fd, name)

    def _handle(self, env: str, env_fd: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=env_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            # Never a notification: removed without following any link inside it.
            self.rejected += 1
            self._warn_once(env, name, "a folder; removed, no link in it followed")
            self._remove_any(env, env_fd, name)
            return
        if not self.limiter.allow(env):
            # Over the rate limit: drop without reading. Counted for the summary line.
            self._remove(env, env_fd, name)
            return
        if stat.S_ISLNK(st.st_mode):
            self._reject(env, env_fd, name, "a symlink, not followed")
            return
        if not stat.S_ISREG(st.st_mode):
            self._reject(env, env_fd, name, "not a regular file (FIFO, socket or device)")
            return
        if not FILE_NAME_RE.fullmatch(name):
            self._reject(env, env_fd, name, "unexpected file name")
            return
        data = self._read(env, env_fd, name)
        if data is None:
            return
        try:
            note = validate(data)
        except InvalidNotification as problem:
            self._reject(env, env_fd, name, str(problem))
            return
        # Claim, remove, show, done: see Journal for why this order.
        self.journal.claim(env, name, data)
        self._remove(env, env_fd, name)
        self._show(Shown(env=env, note=note), lambda: self.journal.done(env, name))

    def _read(self, env: str, env_fd: int, name: str) -> bytes | None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=env_fd)
        except FileNotFoundError:
            return None
        except OSError as problem:
            # ELOOP: swapped for a symlink since the stat; ENXIO/EACCES and friends: reject.
            self._reject(env, env_fd, name, f"cannot open safely ({problem.strerror})")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._reject(env, env_fd, name, "not a regular file")
                return None
            if st.st_size > MAX_FILE_BYTES:
                self._reject(env, env_fd, name, f"larger than {MAX_FILE_BYTES} bytes")
                return None
            chunks: list[bytes] = []
            left = MAX_FILE_BYTES + 1
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
        if len(data) > MAX_FILE_BYTES:  # grew after the fstat
            self._reject(env, env_fd, name, f"larger than {MAX_FILE_BYTES} bytes")
            return None
        return data

    def _show(self, item: Shown, committed: Callable[[], None]) -> None:
        """Show ``item``; ``committed`` runs once that cannot be undone (the journal's done)."""
        self.shown += 1
        received = datetime.now().astimezone()
        if self.as_json:
            record: dict[str, Any] = {
                "env": item.env,
                "urgency": item.note.urgency,
                "title": item.note.title,
                "message": item.note.message,
                "source": item.note.source,
                "id": item.note.id,
                "created": item.note.created,
                "received": received.isoformat(timespec="seconds"),
                "recovered": item.recovered,
            }
            # ensure_ascii: the line on stdout is printable ASCII, whatever the content.
            print(json.dumps(record), file=self.out, flush=True)
            if self.display.tool is None:
                committed()
                return
        self.display.show(item, received.strftime("%H:%M:%S"), committed)


def _oldest_first(name: str) -> tuple[int, str]:
    """Sort key: by the nanosecond stamp `send` puts first in the name, then by name."""
    stamp, _, _ = name.partition("-")
    return (int(stamp) if FILE_NAME_RE.fullmatch(name) else -1, name)


def _prepare_root(root: Path) -> None:
    if not root.exists():
        root.mkdir(mode=ROOT_MODE, parents=True, exist_ok=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let ``kill PID`` stop the watcher like Ctrl-C (observer stopped, summaries flushed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def watch(
    root: Path,
    backend: str,
    *,
    once: bool = False,
    as_json: bool = False,
    stop: threading.Event | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """The ``watch`` verb. ``stop``: lets a caller in another thread end the loop."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    display = Display(backend, stdout=out, stderr=err)
    processor = Processor(root, display, as_json=as_json, stdout=out, stderr=err)
    if once:
        try:
            processor.recover()
            processor.scan()
        finally:
            processor.journal.close()
            processor.flush_summaries(force=True)
        return 0
    # watchdog needs the folder to exist; environments may not have been created yet.
    _prepare_root(root)
    stop = stop or threading.Event()
    with _sigterm_as_interrupt():
        try:
            processor.recover()
            _loop(processor, stop, err)
        except KeyboardInterrupt:
            pass
        finally:
            processor.journal.close()
            processor.flush_summaries(force=True)
    return 0


def _loop(processor: Processor, stop: threading.Event, err: IO[str]) -> None:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    changes: queue.Queue[str] = queue.Queue()

    class _Poke(FileSystemEventHandler):  # type: ignore[misc, unused-ignore]  # Any base w/o stubs
        """Only says "look again"; the scan decides what is there, with safe opens."""

        def on_any_event(self, event: FileSystemEvent) -> None:
            # Our own scans open and read files; those events must not wake the loop again.
            if event.event_type not in ("opened", "closed_no_write"):
                changes.put("changed")

    handler = _Poke()
    observer = Observer()
    # Non-recursive watches: the root (new or removed environment folders) and each real
    # environment folder. A recursive watch would follow whatever tree a sandbox builds.
    observer.schedule(handler, str(processor.root), recursive=False)
    watches: dict[str, Any] = {}

    def refresh_watches() -> None:
        present = set(processor.env_names())
        for env in present - watches.keys():
            try:
                watches[env] = observer.schedule(
                    handler, str(processor.root / env), recursive=False
                )
            except OSError as problem:
                print(
                    f"isofeat notify: warning: [{env}] cannot watch ({problem}); "
                    f"rescanning every {RESCAN_SECONDS:.0f}s instead",
                    file=err,
                    flush=True,
                )
                watches[env] = None
        for env in watches.keys() - present:
            watch_handle = watches.pop(env)
            if watch_handle is not None:
                with suppress(KeyError, OSError):
                    observer.unschedule(watch_handle)

    observer.start()
    try:
        refresh_watches()
        processor.scan()
        last_scan = time.monotonic()
        while not stop.is_set():
            try:
                # A short timeout so that `stop` and the summaries are looked at often.
                changes.get(timeout=0.5)
            except queue.Empty:
                processor.flush_summaries()
                if time.monotonic() - last_scan < RESCAN_SECONDS:
                    continue
            # Let a burst of events settle, then scan once for all of them.
            time.sleep(DEBOUNCE_SECONDS)
            while True:
                try:
                    changes.get_nowait()
                except queue.Empty:
                    break
            refresh_watches()
            processor.scan()
            processor.flush_summaries()
            last_scan = time.monotonic()
    finally:
        observer.stop()
        observer.join(timeout=5)

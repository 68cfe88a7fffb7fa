"""Where the host shows a notification: the desktop (notify-send, osascript) or stdout.

Everything reaching a backend has been validated and cleaned (no control characters, no
escape sequences, one line). The desktop backends still treat it as data: tools run with
list arguments and no shell, text goes after ``--`` (notify-send) or as ``argv`` of the
AppleScript ``on run`` handler (osascript), never into a command line or script source.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from isofeat.notify.message import Notification

DESKTOP_TIMEOUT_SECONDS = 10

# notify-send's -u levels (freedesktop notification spec: low, normal, critical). Anything
# that waits on the user is critical, so it stays on screen until dismissed.
NOTIFY_SEND_URGENCY = {
    "info": "low",
    "complete": "normal",
    "clarification": "critical",
    "blocked": "critical",
    "error": "critical",
}

# Appended to a notification a restarted watcher shows from its journal.
RECOVERED_MARK = " (after a watcher restart: may be a repeat)"

# The AppleScript is a constant; the text arrives as argv items.
OSASCRIPT_LINES = (
    "on run argv",
    "display notification (item 3 of argv) with title (item 1 of argv) subtitle (item 2 of argv)",
    "end run",
)


@dataclass(frozen=True)
class Shown:
    """One notification ready for display, with its label taken from the folder name."""

    env: str
    note: Notification
    # Shown by a restarted watcher from its journal: the killed one may have shown it already
    # (a kill between the line and its journal record; see watch.Journal). Said, not hidden.
    recovered: bool = False

    @property
    def heading(self) -> str:
        return f"[{self.env}] {self.note.title or self.note.urgency}{self._again}"

    def stdout_line(self, clock: str) -> str:
        title = f" {self.note.title}:" if self.note.title else ""
        return (f"{clock} [{self.env}] {self.note.urgency.upper()}{title} "
                f"{self.note.message}{self._again}")

    @property
    def _again(self) -> str:
        return RECOVERED_MARK if self.recovered else ""


def notify_send_argv(item: Shown) -> list[str]:
    """Arguments for notify-send.

    The body goes through html.escape: notification servers that advertise body-markup
    render <a>, <img> and <b> in the body, and a sandbox must not get a clickable link or a
    local image path rendered on the host. The summary is plain text by the spec.
    """
    return [
        "notify-send",
        "-u",
        NOTIFY_SEND_URGENCY[item.note.urgency],
        "-a",
        "isofeat",
        "--",
        item.heading,
        html.escape(item.note.message, quote=False),
    ]


def osascript_argv(item: Shown) -> list[str]:
    """Arguments for osascript: a fixed script, then title, subtitle and body as argv.

    osascript parses options only up to its first positional argument; the first one here
    is the heading, which always starts with "[", so no later argument can be read as an
    option even if it starts with "-".
    """
    argv = ["osascript"]
    for line in OSASCRIPT_LINES:
        argv += ["-e", line]
    return [*argv, item.heading, item.note.urgency, item.note.message]


Spawner = Callable[[list[str]], "subprocess.Popen[bytes]"]


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _nothing() -> None:
    pass


class Display:
    """Shows notifications; falls back to stdout for good when the desktop tool fails."""

    def __init__(
        self,
        backend: str,
        *,
        platform: str = sys.platform,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        spawner: Spawner = _spawn,
    ) -> None:
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.spawner = spawner
        self.tool = self._pick(backend, platform)

    def _pick(self, backend: str, platform: str) -> str | None:
        if backend == "stdout":
            return None
        tool = "osascript" if platform == "darwin" else "notify-send"
        if shutil.which(tool) is not None:
            return tool
        if backend == "desktop":
            print(
                f"isofeat notify: warning: --backend desktop, but {tool} is not on PATH; "
                "showing notifications on stdout",
                file=self.err,
                flush=True,
            )
        return None

    @property
    def name(self) -> str:
        return self.tool or "stdout"

    def show(self, item: Shown, clock: str, committed: Callable[[], None] = _nothing) -> None:
        """Show ``item``; call ``committed`` as soon as the showing cannot be undone.

        That is once the line is written, or once the desktop tool runs: a watcher killed
        while the tool runs does not stop it (it is another process), so the watcher's
        journal must not show the item again (see watch.Journal).
        """
        if self.tool is not None and self._desktop(item, committed):
            return
        print(item.stdout_line(clock), file=self.out, flush=True)
        committed()

    def _desktop(self, item: Shown, committed: Callable[[], None]) -> bool:
        argv = osascript_argv(item) if self.tool == "osascript" else notify_send_argv(item)
        try:
            proc = self.spawner(argv)
        except OSError as problem:
            reason = type(problem).__name__
        else:
            committed()
            try:
                code = proc.wait(timeout=DESKTOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            if code == 0:
                return True
            reason = "TimeoutExpired" if code is None else f"exit code {code}"
        # No session bus, no display, a broken notifier: say so once and use stdout.
        print(
            f"isofeat notify: warning: {self.tool} failed ({reason}); "
            "showing notifications on stdout from now on",
            file=self.err,
            flush=True,
        )
        self.tool = None
        return False

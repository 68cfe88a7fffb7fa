"""The one user-facing error type, caught once in :func:`isofeat.cli.main`."""

from __future__ import annotations

from collections.abc import Sequence

# Exit codes shared by every verb.
EXIT_OK = 0
EXIT_DENIED = 1  # a question answered "no" (whitelist check), or a check that failed
EXIT_USAGE = 2  # bad input: the message names the file, line and fix
EXIT_INTERNAL = 3  # an unexpected error; the traceback is kept
#: Characters of one message line shown before it is cut.
MAX_SHOWN = 2000


def escape(text: str) -> str:
    """``text`` with every non-printable character written as ``\\xNN``/``\\uNNNN``.

    Messages quote what the user (or an agent, through a file it wrote) typed: a raw ESC
    would drive the terminal, and a raw newline could forge a ``fix:`` line. Line breaks
    are escaped too; a message that needs several lines passes them as ``lines``.
    """
    if len(text) > MAX_SHOWN:
        # A pasted megabyte would bury the message; the start says what it was.
        text = f"{text[:MAX_SHOWN]}... ({len(text) - MAX_SHOWN} more characters)"
    if text.isprintable():
        return text  # the common case costs one C-level scan
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


class IsofeatError(Exception):
    """A problem the user can fix. ``str(err)`` states the problem, then the fix.

    ``message`` and ``fix`` are one line each; ``lines`` are extra lines shown between
    them (a list of bad whitelist lines, the tail of a build log). All three are escaped
    when shown, so they may quote user input as it is.
    """

    def __init__(
        self, message: str, *, fix: str | None = None, code: int = EXIT_USAGE,
        lines: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code
        self.lines = tuple(lines)

    def __str__(self) -> str:
        text = escape(self.message)
        text += "".join(f"\n  {escape(line)}" for line in self.lines)
        if self.fix:
            text += f"\n  fix: {escape(self.fix)}"
        return text

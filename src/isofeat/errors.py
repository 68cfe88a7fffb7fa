"""The one user-facing error type, caught once in :func:`isofeat.cli.main`."""

from __future__ import annotations

# Exit codes shared by every verb.
EXIT_OK = 0
EXIT_DENIED = 1  # a question answered "no" (whitelist check), or a check that failed
EXIT_USAGE = 2  # bad input: the message names the file, line and fix
EXIT_INTERNAL = 3  # an unexpected error; the traceback is kept


class IsofeatError(Exception):
    """A problem the user can fix. ``str(err)`` states the problem, then the fix."""

    def __init__(self, message: str, *, fix: str | None = None, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message

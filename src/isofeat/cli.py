"""The ``isofeat`` command line.

Each verb group lives in its own module of :mod:`isofeat.commands` with a
``register(subparsers)`` function; this module only wires them up and turns
:class:`IsofeatError` into exit code 2.
Heavy libraries are imported inside the verbs, never here: ``isofeat init`` runs on
every container open and its cost is mostly interpreter start-up plus imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from isofeat import __version__
from isofeat.errors import EXIT_INTERNAL, IsofeatError

# Not typing.TYPE_CHECKING: importing typing would cost every verb, `init` included.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# Modules that add verbs, in the order --help lists them: isofeat.commands.<name>.
COMMAND_MODULES = (
    "whitelist",
    "proxy",
    "egress",
    "image",
    "init",
    "doctor",
    "task",
    "run",
    "notify",
    "scaffold",
    "secrets",
)


# The verbs whose module can be imported alone. `isofeat init` runs on every container open:
# importing only its module keeps start-up near a bare interpreter's (see benchmarks/).
FAST_VERBS = {
    "init": "init",
    "doctor": "doctor",
    "notify": "notify",
    "run": "run",
    "whitelist": "whitelist",
    "secrets": "secrets",
}


class UsageError(IsofeatError):
    """Bad command-line syntax, found by argparse; shown after the usage line."""

    def __init__(self, message: str, *, fix: str, usage: str) -> None:
        super().__init__(message, fix=fix)
        self.usage = usage


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised as :class:`IsofeatError` instead of printed raw.

    argparse quotes some arguments with repr() but echoes others as typed ("unrecognized
    arguments: ..."); raising lets :func:`main` print every error the one escaped way, and
    lets a verb that parses words of its own (``scaffold``) fail like any other error.
    Subparsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, fix=f"see `{self.prog} --help`", usage=self.format_usage())


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or only ``verb``'s part when it is one of :data:`FAST_VERBS`."""
    parser = ArgumentParser(
        prog="isofeat",
        description="One sandbox per coding task for AI agents: whitelists, the egress proxy, "
        "images and agent launch.",
    )
    parser.add_argument("--version", action="version", version=f"isofeat {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    if verb == "--version":
        modules: Sequence[str] = ()
    elif verb in FAST_VERBS:
        modules = [FAST_VERBS[verb]]
    else:
        modules = COMMAND_MODULES
    for name in modules:
        importlib.import_module(f"isofeat.commands.{name}").register(sub)
    return parser


def _report(err: IsofeatError) -> int:
    """The one place errors reach the terminal; str(err) escapes what the user typed."""
    if isinstance(err, UsageError):
        # Built from option names only, never from user input: printed as it is.
        sys.stderr.write(err.usage)
    print(f"isofeat: error: {err}", file=sys.stderr)
    return err.code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits 0 after --help/--version; return, don't raise.
        return exit_.code if isinstance(exit_.code, int) else 2
    except IsofeatError as err:
        return _report(err)
    try:
        result: int = args.func(args)
    except IsofeatError as err:
        return _report(err)
    except PermissionError as err:
        # A folder or file of the user's that this user may not use: say which, no traceback.
        return _report(IsofeatError(f"{err.filename or 'a file'}: {err.strerror}",
                                    fix="check the permissions of that path and its folders"))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `isofeat ... | head` closed the pipe early; that is not an error.
        return 0
    except Exception:
        import traceback

        traceback.print_exc()
        return EXIT_INTERNAL
    return result

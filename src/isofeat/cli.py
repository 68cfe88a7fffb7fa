"""The ``isofeat`` command line.

Each verb group lives in its own ``commands_*`` module with a ``register(subparsers)``
function; this module only wires them up and turns :class:`IsofeatError` into exit code 2.
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

# Modules that add verbs, in the order --help lists them.
COMMAND_MODULES = (
    "isofeat.commands_whitelist",
    "isofeat.commands_proxy",
    "isofeat.commands_image",
    "isofeat.commands_env",
    "isofeat.commands_task",
    "isofeat.commands_agents",
    "isofeat.commands_notify",
    "isofeat.commands_scaffold",
)


# The verbs whose module can be imported alone. `isofeat init` runs on every container open:
# importing only its module keeps start-up near a bare interpreter's (see benchmarks/).
FAST_VERBS = {
    "init": "isofeat.commands_env",
    "doctor": "isofeat.commands_env",
    "notify": "isofeat.commands_notify",
    "run": "isofeat.commands_agents",
    "whitelist": "isofeat.commands_whitelist",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or only ``verb``'s part when it is one of :data:`FAST_VERBS`."""
    parser = argparse.ArgumentParser(
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
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits 2 on bad usage and 0 after --help/--version; return, don't raise.
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        result: int = args.func(args)
    except IsofeatError as err:
        print(f"isofeat: error: {err}", file=sys.stderr)
        return err.code
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

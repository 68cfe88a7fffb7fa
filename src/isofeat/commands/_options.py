"""Options that several verbs share, declared once."""

from __future__ import annotations

import argparse

from isofeat import argtypes
from isofeat.whitelist import BUILTIN_LISTS


def add_layer_options(parser: argparse.ArgumentParser, *, defaults: str = "sandbox") -> None:
    """Options that choose the whitelist layers: ``whitelist check/show/suggest`` and
    ``proxy render``. ``defaults``: the built-in list used when ``--defaults`` is not given."""
    parser.add_argument(
        "--whitelist",
        "-w",
        metavar="FILE",
        type=argtypes.path,
        nargs="+",
        action="extend",
        default=[],
        help="whitelist file(s), merged in the order given after the defaults and the global file",
    )
    parser.add_argument(
        "--defaults",
        choices=[*BUILTIN_LISTS, "none"],
        default=defaults,
        help=f"built-in list to start from (default: {defaults}; 'dind' for Docker-in-Docker)",
    )
    parser.add_argument(
        "--no-global",
        action="store_true",
        help="leave out the user's global file (~/.config/isofeat/whitelist.txt)",
    )


def layer_defaults(value: str) -> str | None:
    """``--defaults`` as the library takes it: None for "none"."""
    return None if value == "none" else value

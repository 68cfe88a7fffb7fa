"""``isofeat egress log``: what the proxy allowed and denied."""

from __future__ import annotations

import argparse
import json
import sys

from isofeat import argtypes
from isofeat.errors import EXIT_OK


def egress_log(source: str, container: str | None, denied_only: bool, as_json: bool) -> int:
    """List destinations from a proxy log, with allowed and denied counts."""
    from isofeat.egress_log import read_log, safe, summarise

    records = summarise(read_log(source, container))
    if denied_only:
        records = [r for r in records if r.denied]
    if as_json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return EXIT_OK
    if not records:
        print("no requests in the log" + (" were denied" if denied_only else ""), file=sys.stderr)
        return EXIT_OK
    print(f"{'DENIED':>7} {'ALLOWED':>7}  {'MODE':<7} DESTINATION")
    for r in records:
        print(f"{r.denied:>7} {r.allowed:>7}  {r.mode.upper():<7} {safe(r.host)}:{r.port}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("egress", help="read what the proxy allowed and denied")
    verbs = parser.add_subparsers(dest="egress_verb", metavar="VERB", required=True)
    p = verbs.add_parser(
        "log",
        help="list destinations from a proxy log with counts",
        description="Reads tinyproxy's log (a file, '-' for stdin, or --container) and lists "
        "each destination with how often it was allowed and denied. Example: "
        "`docker logs PROXY 2>&1 | isofeat egress log --denied`.",
    )
    p.add_argument("log", metavar="FILE|-", nargs="?", default="-", type=argtypes.text)
    p.add_argument("--container", type=argtypes.text, help="read the log of this proxy container")
    p.add_argument("--denied", action="store_true", help="list only denied destinations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: egress_log(a.log, a.container, a.denied, a.json))

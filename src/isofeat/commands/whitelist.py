"""``isofeat whitelist {lint,check,show,suggest}``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from isofeat import argtypes
from isofeat.commands._options import add_layer_options, layer_defaults
from isofeat.errors import EXIT_DENIED, EXIT_OK, EXIT_USAGE, IsofeatError, escape
from isofeat.whitelist import Mode, load_policy, parse_target, parse_text, read_file


def lint(files: Sequence[Path]) -> int:
    """Report every bad line of every file; exit 2 if there is one."""
    count = 0
    for path in files:
        text = sys.stdin.read() if str(path) == "-" else read_file(path)
        _items, problems = parse_text(text, "<stdin>" if str(path) == "-" else str(path))
        for problem in problems:
            # The file name is the user's, the line the file's: neither reaches the TTY raw.
            print("\n".join(escape(line) for line in problem.lines()), file=sys.stderr)
        count += len(problems)
    if count:
        print(f"{count} bad line(s); nothing in these files was applied.", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def check(
    target: str,
    mode: Mode,
    files: Sequence[Path],
    defaults: str | None,
    include_global: bool,
    as_json: bool,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """Exit 0 when ``target`` is allowed, 1 when denied; say which rule decided."""
    policy = load_policy(files, defaults=defaults, include_global=include_global, environ=environ)
    host, port = parse_target(target, mode)
    decision = policy.decide(host, port, mode)
    if as_json:
        print(json.dumps(decision.as_dict()))
    else:
        verdict = "ALLOW" if decision.allowed else "DENY"
        print(f"{verdict} {mode.upper()} {host}:{port}: {decision.reason}")
    return EXIT_OK if decision.allowed else EXIT_DENIED


def show(
    files: Sequence[Path],
    defaults: str | None,
    include_global: bool,
    as_json: bool,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """Print the merged whitelist with the source of every entry."""
    policy = load_policy(files, defaults=defaults, include_global=include_global, environ=environ)
    if as_json:
        print(
            json.dumps(
                {
                    "entries": [
                        {
                            "entry": str(e),
                            "http_port": e.ports("http"),
                            "connect_port": e.ports("connect"),
                            "source": str(e.source),
                        }
                        for e in policy.entries
                    ],
                    "removed": [
                        {"entry": str(e), "source": str(e.source), "removed_by": str(r.source)}
                        for e, r in policy.removed
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK
    width = max((len(str(e)) for e in policy.entries), default=0)
    for entry in policy.entries:
        print(f"{entry!s:<{width}}  # {escape(str(entry.source))}")
    for entry, removal in policy.removed:
        print(escape(f"# removed: {entry} ({entry.source}) by !{removal.target} "
                     f"({removal.source})"))
    return EXIT_OK


def suggest(
    log: str,
    container: str | None,
    files: Sequence[Path],
    defaults: str | None,
    include_global: bool,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """Print whitelist lines that would allow what the proxy denied."""
    from isofeat.egress_log import read_log, suggestions, summarise

    records = summarise(read_log(log, container))
    policy = (
        load_policy(files, defaults=defaults, include_global=include_global, environ=environ)
        if files or defaults
        else None
    )
    lines = suggestions(records, policy)
    if not lines:
        print("# nothing was denied; no lines to suggest", file=sys.stderr)
    for line in lines:
        print(line)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "whitelist",
        help="lint, check and show egress whitelists",
        description="The egress whitelist: one host per line, '*.example.com' for subdomains, "
        "'host:port' for another port, '!host' to drop an inherited entry. Layers merge in this "
        "order: built-in defaults, ~/.config/isofeat/whitelist.txt, then the files given.",
    )
    verbs = parser.add_subparsers(dest="whitelist_verb", metavar="VERB", required=True)

    p = verbs.add_parser("lint", help="report bad lines as FILE:LINE: reason, with the fix")
    p.add_argument(
        "files", metavar="FILE", type=argtypes.path, nargs="+", help="whitelist file(s), or -"
    )
    p.set_defaults(func=lambda a: lint(a.files))

    p = verbs.add_parser(
        "check",
        help="is HOST[:PORT] allowed? exit 0 allowed, 1 denied, 2 bad input",
        description="Say whether the proxy would let a request through, and which rule decided. "
        "HOST is taken as it appears on the wire (ASCII case-insensitive).",
    )
    p.add_argument("target", metavar="HOST[:PORT]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--connect",
        dest="mode",
        action="store_const",
        const="connect",
        help="an HTTPS tunnel (CONNECT); the default, port 443 unless given",
    )
    mode.add_argument(
        "--http",
        dest="mode",
        action="store_const",
        const="http",
        help="a plain HTTP request; port 80 unless given",
    )
    p.set_defaults(mode="connect")
    add_layer_options(p)
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(
        func=lambda a: check(
            a.target, a.mode, a.whitelist, layer_defaults(a.defaults), not a.no_global, a.json
        )
    )

    p = verbs.add_parser("show", help="print the merged whitelist and where each entry comes from")
    add_layer_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(
        func=lambda a: show(a.whitelist, layer_defaults(a.defaults), not a.no_global, a.json)
    )

    p = verbs.add_parser(
        "suggest",
        help="print the lines that would allow what the proxy denied (reads its log)",
        description="Reads a proxy log (a file, '-' for stdin, or --container) and prints a "
        "whitelist line for each denied destination. With --whitelist/--defaults, hosts that "
        "the merged list already allows are left out. Review before adding: a denial may be an "
        "agent trying to exfiltrate.",
    )
    p.add_argument("log", metavar="FILE|-", nargs="?", default="-", type=argtypes.text)
    p.add_argument(
        "--container", type=argtypes.text, help="read the log of this proxy container instead"
    )
    add_layer_options(p, defaults="none")
    p.set_defaults(
        func=lambda a: suggest(
            a.log, a.container, a.whitelist, layer_defaults(a.defaults), not a.no_global
        )
    )


__all__ = ["IsofeatError", "check", "lint", "register", "show", "suggest"]

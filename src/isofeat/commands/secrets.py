"""``isofeat secrets set|list|rm``: the user's credentials, kept on the host (docs/secrets.md).

The value of ``set`` comes from stdin (hidden when it is a terminal), never from the command
line, where shell history and ``ps`` would keep it. Nothing here prints a value.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from isofeat.errors import EXIT_OK, IsofeatError


def secrets_set(name: str, environ: Mapping[str, str] = os.environ) -> int:
    from isofeat.broker import all_bindings
    from isofeat.secret_store import Store, check_name

    check_name(name)
    bound = [b for b in all_bindings(environ) if b.secret == name]
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {name} (not shown): ")
    else:
        value = sys.stdin.read()
    value = value.strip("\r\n")
    backend = Store(environ).set(name, value)
    where = ", ".join(h for b in bound for h in b.hosts)
    print(f"isofeat: {name} stored in the {backend}"
          + (f"; sent only to {where}" if where else
             f"; no binding names it yet, add one to {_bindings_hint(environ)}"),
          file=sys.stderr)
    print("isofeat: running environments pick it up when reopened (isofeat init)",
          file=sys.stderr)
    return EXIT_OK


def secrets_list(as_json: bool, environ: Mapping[str, str] = os.environ) -> int:
    from isofeat.broker import all_bindings
    from isofeat.secret_store import Store

    index = Store(environ).index()
    bindings = all_bindings(environ)
    rows: list[dict[str, Any]] = []
    for binding in bindings:
        rows.append({"secret": binding.secret, "set": binding.secret in index,
                     "backend": index.get(binding.secret), "hosts": list(binding.hosts),
                     "header": binding.header, "env": list(binding.env),
                     "source": binding.source})
    rows += [{"secret": name, "set": True, "backend": backend, "hosts": [], "header": None,
              "env": [], "source": None}
             for name, backend in sorted(index.items())
             if not any(b.secret == name for b in bindings)]
    if as_json:
        import json

        print(json.dumps(rows, indent=1))
        return EXIT_OK
    for row in rows:
        state = f"set ({row['backend']})" if row["set"] else "not set"
        hosts = ", ".join(row["hosts"]) or "(no binding: never sent)"
        header = f" in {row['header']}" if row["header"] else ""
        print(f"{row['secret']:<26} {state:<16} -> {hosts}{header}")
    return EXIT_OK


def secrets_rm(name: str, environ: Mapping[str, str] = os.environ) -> int:
    from isofeat.secret_store import Store

    if not Store(environ).remove(name):
        raise IsofeatError(f"secret {name} is not set", fix="see `isofeat secrets list`")
    print(f"isofeat: {name} removed; reopen running environments (isofeat init)",
          file=sys.stderr)
    return EXIT_OK


def _bindings_hint(environ: Mapping[str, str]) -> str:
    from isofeat.broker import user_bindings_path

    return str(user_bindings_path(environ))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "secrets",
        help="keep the agents' credentials on the host; the sandbox sees placeholders",
        description="Store credentials in the OS keyring (or a 0600 file when there is none). "
        "Sandboxes get a random placeholder per environment; the credential broker puts the "
        "real value into requests to the hosts it is bound to. See docs/secrets.md.",
    )
    verbs = p.add_subparsers(dest="secrets_verb", metavar="ACTION", required=True)
    s = verbs.add_parser("set", help="store NAME; the value is read from stdin",
                         description="Store NAME. The value is read from stdin (hidden on a "
                         "terminal): `isofeat secrets set ANTHROPIC_API_KEY`, or "
                         "`printf %%s \"$TOKEN\" | isofeat secrets set GITHUB_TOKEN`.")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=lambda a: secrets_set(a.name))
    ls = verbs.add_parser("list", help="the bindings and which secrets are set (no values)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=lambda a: secrets_list(a.json))
    rm = verbs.add_parser("rm", help="remove NAME from the keyring or the file")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=lambda a: secrets_rm(a.name))

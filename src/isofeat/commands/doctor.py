"""``isofeat doctor``: the sandbox self-test, inside the container."""

from __future__ import annotations

import argparse
import json
import sys

from isofeat.errors import EXIT_DENIED, EXIT_OK


def doctor(as_json: bool, stop_on_failure: bool = False) -> int:
    from isofeat.doctor import run_checks, stop_sandbox

    results = run_checks()
    ok = all(c.ok for c in results)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [c.as_dict() for c in results]}, indent=2))
    else:
        for c in results:
            print(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<17} {c.detail}")
        print(f"isofeat doctor: {'all checks passed' if ok else 'SANDBOX CHECK FAILED'} "
              f"({sum(c.ok for c in results)}/{len(results)})")
    if not ok and stop_on_failure:
        sys.stdout.flush()
        print(f"isofeat doctor: {stop_sandbox()}", file=sys.stderr, flush=True)
    return EXIT_OK if ok else EXIT_DENIED


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="the sandbox self-test, run inside the container as the agent (exit 1 on failure)",
        description="Checks the sandbox from the agent's side: user and groups, capabilities "
        "(CapEff 0, NoNewPrivs 1), no sudo and no Docker socket, what can be written "
        "(.devcontainer/ must be read-only), nothing on root's PATH writable, proxy variables, "
        "no direct egress, no DNS, no IPv6, nothing on the host answers (a refusal counts as "
        "an answer), a denied name gets the proxy's 403 and an allowed name passes the filter.",
    )
    p.add_argument("--json", action="store_true", help="print every check as JSON")
    p.add_argument(
        "--stop-on-failure", action="store_true",
        help="when a check fails, stop this container (the postStartCommand uses this, so a "
        "sandbox that fails its self-test does not keep running)",
    )
    p.set_defaults(func=lambda a: doctor(a.json, a.stop_on_failure))

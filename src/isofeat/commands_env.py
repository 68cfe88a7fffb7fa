"""``isofeat init`` (host) and ``isofeat doctor`` (inside the sandbox)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from isofeat import argtypes
from isofeat.errors import EXIT_DENIED, EXIT_OK, IsofeatError
from isofeat.layout import SANDBOX_GID, SANDBOX_UID


def init(workspace: Path, as_json: bool, quiet: bool, share: bool) -> int:
    from isofeat.init import init as run_init

    if not workspace.is_dir():
        # Said here, before "has no .devcontainer/": the folder itself is what is wrong.
        what = "does not exist" if not workspace.exists() else "is not a folder"
        raise IsofeatError(f"{workspace}: {what}", fix="give the project's folder (default: .)")
    result = run_init(workspace, share=share)
    if as_json:
        print(json.dumps(result))
    elif not quiet:
        print(
            f"isofeat: environment {result['env_id']} (compose project {result['project']}); "
            f"{result['sandbox_entries']} whitelist entries"
            + (f", DinD {result['dind_entries']}" if result["docker_in_docker"] else "")
            + ("; .env updated" if result["changed"] else "; .env unchanged"),
            file=sys.stderr,
        )
    return EXIT_OK


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
        "init",
        help="prepare this worktree's environment on the host (devcontainer initializeCommand)",
        description="Derives the environment id and Compose project name from the worktree's "
        "real path, creates its notification folder, merges the whitelists and renders both "
        "proxies' configs, finds the git folders to mount, and writes .devcontainer/.env. "
        "Idempotent; runs on every open.",
    )
    p.add_argument(
        "workspace", nargs="?", type=argtypes.path, default=Path.cwd(), metavar="WORKSPACE"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument(
        "--no-share", action="store_true",
        help=f"do not give the worktree to the sandbox group (gid {SANDBOX_GID}); then make it "
        f"writable for uid {SANDBOX_UID} yourself",
    )
    p.set_defaults(func=lambda a: init(a.workspace, a.json, a.quiet, not a.no_share))

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

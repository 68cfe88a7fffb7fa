"""``isofeat init``: prepare a worktree's environment on the host."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from isofeat import argtypes
from isofeat.errors import EXIT_OK, IsofeatError
from isofeat.layout import SANDBOX_GID, SANDBOX_UID


def init(workspace: Path, as_json: bool, quiet: bool, share: bool) -> int:
    from isofeat import quickinit
    from isofeat.init import init as run_init
    from isofeat.init import quick_outputs, quick_plan

    if not workspace.is_dir():
        # Said here, before "has no .devcontainer/": the folder itself is what is wrong.
        what = "does not exist" if not workspace.exists() else "is not a folder"
        raise IsofeatError(f"{workspace}: {what}", fix="give the project's folder (default: .)")
    # The warm path's stamp (quickinit.py): inputs fingerprinted before the run, outputs
    # after it. A run that shares less than a plain `isofeat init` leaves no stamp.
    real = workspace.resolve()
    plan = quick_plan(real, os.environ) if share else None
    before = plan.inputs_now(os.environ) if plan else ""
    quickinit.forget(str(real), os.environ)
    result = run_init(workspace, share=share)
    message = (
        f"isofeat: environment {result['env_id']} (compose project {result['project']}); "
        f"{result['sandbox_entries']} whitelist entries"
        + (f", DinD {result['dind_entries']}" if result["docker_in_docker"] else "")
    )
    if as_json:
        print(json.dumps(result))
    elif not quiet:
        print(message + ("; .env updated" if result["changed"] else "; .env unchanged"),
              file=sys.stderr)
    if plan is not None:
        quick_outputs(plan, result, os.environ)
        quickinit.record(plan, before, message + "; .env unchanged", os.environ)
    return EXIT_OK


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

"""Launching agents: only inside a sandbox, and only after the sandbox self-test passes.

Skipping permission prompts on a bare host is exactly what this project exists to prevent,
so every path that cannot prove it is inside a healthy sandbox refuses to launch.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence

from isofeat.envvars import in_sandbox
from isofeat.errors import EXIT_DENIED, EXIT_USAGE, IsofeatError

__all__ = ["AGENTS", "in_sandbox", "launch", "run_claude_main", "self_test"]

#: Each agent's command and the flag that turns its permission prompts off.
AGENTS: Mapping[str, tuple[str, ...]] = {
    "claude": ("claude", "--dangerously-skip-permissions"),
    "codex": ("codex", "--dangerously-bypass-approvals-and-sandbox"),
    "gemini": ("gemini", "--yolo"),
}


def self_test() -> tuple[bool, str]:
    """Run the sandbox self-test. Returns (passed, the first failed check or a summary)."""
    from isofeat.doctor import run_for_launch

    return run_for_launch()


def launch(agent: str, args: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    """Exec ``agent`` with its prompts off; raise :class:`IsofeatError` wherever that is not
    safe (exit 1), or for an unknown agent (exit 2)."""
    if agent not in AGENTS:
        raise IsofeatError(f"unknown agent {agent!r}; choose from {', '.join(AGENTS)}",
                           code=EXIT_USAGE)
    if not in_sandbox(environ):
        raise IsofeatError(
            f"refusing to start {agent} with its permission prompts off outside an isofeat "
            "sandbox (ISOFEAT_SANDBOX is not 1).",
            fix="open the project in its dev container (VS Code, JetBrains or "
            "`devcontainer up`) and run this there.",
            code=EXIT_DENIED,
        )
    ok, detail = self_test()
    if not ok:
        raise IsofeatError(f"refusing to start {agent}: sandbox self-test failed: {detail}",
                           code=EXIT_DENIED)
    command = AGENTS[agent]
    path = shutil.which(command[0])
    if path is None:
        raise IsofeatError(f"{command[0]} is not installed in this sandbox", code=EXIT_DENIED)
    os.execv(path, [path, *command[1:], *args])  # noqa: S606  # exec, no shell: argv is a list
    return EXIT_DENIED  # not reached: execv replaces the process


def run_claude_main(argv: Sequence[str] | None = None) -> int:
    """The ``run-claude`` console script: ``isofeat run claude`` with its arguments, through
    the CLI's one error path."""
    from isofeat.cli import main

    return main(["run", "claude", *(sys.argv[1:] if argv is None else argv)])

"""``isofeat run AGENT [ARGS]``: an agent of :data:`isofeat.agents.AGENTS`."""

from __future__ import annotations

import argparse

from isofeat.agents import AGENTS, launch


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="launch an agent with prompts off, only in a sandbox that passes its self-test",
        description="Runs the sandbox self-test, then execs the agent with its no-prompt flag "
        f"({', '.join(' '.join(command) for command in AGENTS.values())}). Refuses outside an "
        "isofeat sandbox.",
    )
    p.add_argument("agent", choices=sorted(AGENTS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the agent")
    p.set_defaults(func=lambda a: launch(a.agent, a.args))

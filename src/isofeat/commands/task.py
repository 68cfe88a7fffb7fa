"""``isofeat task {new,list,rm,merge}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from isofeat import argtypes
from isofeat.errors import EXIT_OK


def _print(result: object, as_json: bool, text: str) -> None:
    print(json.dumps(result, indent=2) if as_json else text)


def new(name: str, base: str | None, up: bool, accept: bool, as_json: bool,
        on: str | None = None, images: str = "ship", install: bool = False) -> int:
    from isofeat import tasks

    if on is not None:
        return _remote_new(name, base, on, accept, as_json, images, install)
    result = tasks.new(Path.cwd(), name, base, up, accept_devcontainer=accept)
    _print(result, as_json, f"task {name}: {result['path']} on {result['branch']}"
           + (" (environment up)" if result["up"] else
              f"\n  open it: devcontainer up --workspace-folder {result['path']}"))
    return EXIT_OK


def list_(as_json: bool) -> int:
    from isofeat import remote, tasks

    items = [{**t, "where": "local"} for t in tasks.list_tasks(Path.cwd())]
    items += remote.list_remote(Path.cwd())
    if as_json:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    if not items:
        print("no tasks (isofeat task new NAME)", file=sys.stderr)
        return EXIT_OK
    print(f"{'TASK':<20} {'AHEAD':>5} {'BEHIND':>6} {'SANDBOX':<12} {'ENV':<8} {'NOTES':>5}  "
          f"{'WHERE':<12} PATH")
    for t in items:
        head = str(t["agent_head"] or "-")[:10] + ("*" if t["unmerged"] else "")
        print(f"{t['name']!s:<20} {t['ahead']!s:>5} {t['behind']!s:>6} {head:<12} "
              f"{'running' if t['running'] else 'stopped':<8} "
              f"{t['pending_notifications']!s:>5}  {t['where']!s:<12} {t['path']}")
    return EXIT_OK


def rm(name: str, force: bool, as_json: bool) -> int:
    from isofeat import tasks

    if _is_remote(name):
        from isofeat import remote

        result = remote.rm(Path.cwd(), name, force)
        _print(result, as_json, f"removed task {name} on {result['on']}")
        return EXIT_OK
    result = tasks.rm(Path.cwd(), name, force)
    _print(result, as_json, f"removed task {name}")
    return EXIT_OK


def merge(name: str, allow_devcontainer: bool, as_json: bool) -> int:
    from isofeat import tasks

    if _is_remote(name):
        from isofeat import remote

        result = remote.merge(Path.cwd(), name, allow_devcontainer)
        _print(result, as_json, f"merged {result['branch']} from {result['on']} into "
               f"{result['merged_into']}")
        return EXIT_OK
    result = tasks.merge(Path.cwd(), name, allow_devcontainer)
    _print(result, as_json, f"merged {result['branch']} into {result['merged_into']}")
    return EXIT_OK


def fetch(as_json: bool) -> int:
    from isofeat import tasks

    result = tasks.fetch(Path.cwd())
    branches = result["branches"]
    assert isinstance(branches, dict)
    if as_json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    if not branches:
        print("the sandbox has no branches yet (nothing to fetch)", file=sys.stderr)
    for name, info in branches.items():
        line = f"{name} {info['sha'][:12]}"
        if info["host_tool_changes"]:
            line += f"  REVIEW: changes {', '.join(info['host_tool_changes'])}"
        print(line)
    if branches:
        print("next: review with `git log -p HEAD..sandbox/<branch>`, then `git merge "
              "sandbox/<branch>` (or `git reset sandbox/<branch>` when the worktree already "
              "holds its files)", file=sys.stderr)
    return EXIT_OK


# --- tasks on another machine (isofeat.remote) ----------------------------------------------

def _remote_new(name: str, base: str | None, on: str, accept: bool, as_json: bool,
                images: str, install: bool) -> int:
    from isofeat import remote

    result = remote.new(Path.cwd(), name, on, base, accept_devcontainer=accept, images=images,
                         install=install)
    _print(result, as_json, f"task {name} on {result['on']}: {result['remote_path']} "
           f"(environment up)\n  attach: see docs/remote.md (Remote-SSH, then Dev Containers)")
    return EXIT_OK


def _is_remote(name: str) -> bool:
    """A task this repository started with --on (its record exists); else a local one."""
    from isofeat import remote, tasks

    tasks.validate_name(name)
    return remote.read_record(tasks.main_repo(Path.cwd()).workspace, name) is not None


def export(name: str, as_json: bool) -> int:
    from isofeat import remote

    result = remote.export(Path.cwd(), name)
    _print(result, as_json, f"{result['ref']} {result['sha']}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "task",
        help="one worktree and one sandbox environment per task",
        description="Tasks are git worktrees beside the repository (../<repo>-<NAME>, branch "
        "task/<NAME>), each with its own Compose project, networks and volumes.",
    )
    verbs = parser.add_subparsers(dest="task_verb", metavar="VERB", required=True)

    p = verbs.add_parser("new", help="create a worktree (and with --up, its environment)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--base", metavar="REF", help="start from this ref (default: HEAD)")
    p.add_argument("--up", action="store_true", help="bring the environment up (devcontainer up)")
    p.add_argument("--accept-devcontainer", action="store_true",
                   help="start from a base whose .devcontainer/ differs from the approved one "
                   "(after you reviewed it)")
    p.add_argument("--on", metavar="HOST", type=argtypes.text,
                   help="make the task on another machine's Docker engine, reached over SSH: "
                   "user@host, a Host from ~/.ssh/config, or a Docker context with an ssh:// "
                   "endpoint (implies --up; docs/remote.md)")
    p.add_argument("--images", choices=("ship", "remote"), default="ship",
                   help="with --on: ship: send the isofeat images the remote lacks or has in "
                   "another build (default); remote: use the ones built there (its own CAs)")
    p.add_argument("--install", action="store_true",
                   help="with --on: install what is missing there under ~/.local: isofeat "
                   "from a wheel of this version ($ISOFEAT_WHEEL_DIR or the template's), the "
                   "devcontainer CLI with npm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: new(a.name, a.base, a.up, a.accept_devcontainer, a.json,
                                      a.on, a.images, a.install))

    p = verbs.add_parser("list", help="tasks with ahead/behind, environment state, notifications")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: list_(a.json))

    p = verbs.add_parser(
        "rm", help="remove a task's containers, networks, volumes, notifications and worktree",
        description="Removes exactly this task's Compose project resources, its notification "
        "and state folders, and its worktree. The branch is deleted only when it is merged, "
        "or with --force (which also discards uncommitted changes in the worktree).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: rm(a.name, a.force, a.json))

    p = verbs.add_parser("merge", help="merge task/NAME into the current branch (clean tree only)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--allow-devcontainer-changes", action="store_true",
                   help="merge even when the task branch changes files that host tools act on "
                   "(.devcontainer/, .vscode/, .gitattributes, .envrc, hooks, CI, ...)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: merge(a.name, a.allow_devcontainer_changes, a.json))

    p = verbs.add_parser(
        "export", help="(on a remote machine) the sandbox's task/NAME as refs/isofeat/tasks/NAME",
        description="Imports the sandbox's task/NAME into this repository as data, for the "
        "machine that started the task with --on to fetch over ssh (task merge runs it).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: export(a.name, a.json))

    p = sub.add_parser(
        "fetch",
        help="bring the sandbox's commits into this repository as sandbox/<branch>",
        description="The sandbox commits into a git of its own; this reads its branches as "
        "data (no hooks, config or links of the sandbox are used), checks the objects, and "
        "stores them as refs/remotes/sandbox/<branch> in the repository you opened. It lists "
        "changes to files that host tools act on, for review before you merge.",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: fetch(a.json))

"""``isofeat task``: one git worktree and one sandbox environment per task.

A task NAME is a worktree beside the repository (``../<repo>-<NAME>``) on the branch
``task/<NAME>``. Its environment is the Compose project ``isofeat-<env id>`` that
``isofeat init`` derives from the worktree's real path, so tasks never share containers,
networks or volumes, and removing one selects its resources by that exact project label.

The sandbox never writes the main repository: it commits into a git of its own in the task's
state folder (hostgit.py). ``task merge`` brings that work back as data, shows and refuses
changes to files that host tools act on, and merges. Every git call here goes through
:mod:`isofeat.hostgit` (explicit git folder, fsmonitor and hooks off).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from isofeat import hostgit
from isofeat.errors import IsofeatError
from isofeat.hostgit import HostGit
from isofeat.layout import SETTINGS_FILE, Environment, env_id_for, project_name
from isofeat.settings import read_settings

BRANCH_PREFIX = "task/"
#: Where ``task merge`` puts a task's imported branch in the main repository.
IMPORT_PREFIX = "refs/isofeat/tasks/"
#: In the main repository's state folder: the git tree id of the ``.devcontainer/`` that the
#: user last approved; ``task new`` refuses a base whose box differs.
APPROVED_BOX = "approved-devcontainer"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,47}")
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def validate_name(name: str) -> str:
    """A task name becomes a folder name and a branch name: keep it boring (exit 2 if not)."""
    fix = "use 1-48 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    if not _NAME.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise IsofeatError(f"bad task name {name!r}", fix=fix)
    return name


def _enclosing_git(start: Path, fix: str) -> HostGit:
    """The verified git of the nearest folder at or above ``start`` that has a ``.git``."""
    here = start.resolve()
    for folder in (here, *here.parents):
        if os.path.lexists(folder / ".git"):
            host = hostgit.verify(folder)
            if host is not None:
                return host
    raise IsofeatError(f"{start}: not inside a git repository", fix=fix)


def main_repo(start: Path) -> HostGit:
    """The main repository of the worktree around ``start``, verified (hostgit.verify)."""
    host = _enclosing_git(start, fix="run isofeat task in your project's repository")
    if host.linked:  # from a task worktree, tasks still belong to the main repository
        main = hostgit.verify(host.common_dir.parent)
        if main is None or main.common_dir != host.common_dir:
            raise IsofeatError(f"{host.common_dir}: the main repository has no worktree",
                               fix="run isofeat task in a repository with a working tree")
        return main
    return host


def task_path(main: HostGit, name: str) -> Path:
    return main.workspace.parent / f"{main.workspace.name}-{name}"


def _state(path: Path, environ: Mapping[str, str]) -> Path:
    return Environment(path, environ).state_dir


def agent_git(path: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The sandbox's own repository for the worktree at ``path`` (made by isofeat init)."""
    return Environment(path, environ).agent_git


def _worktrees(main: HostGit) -> list[dict[str, str]]:
    """``git worktree list --porcelain`` as dicts (worktree, branch, HEAD)."""
    items: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in main.git("worktree", "list", "--porcelain").stdout.splitlines():
        if not line:
            if current:
                items.append(current)
            current = {}
            continue
        key, _, value = line.partition(" ")
        current[key] = value
    if current:
        items.append(current)
    return items


def find_task(main: HostGit, name: str) -> dict[str, str] | None:
    branch = f"refs/heads/{BRANCH_PREFIX}{name}"
    for wt in _worktrees(main):
        if wt.get("branch") == branch:
            return wt
    return None


def _sha(main: HostGit, rev: str) -> str | None:
    proc = main.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _merged_elsewhere(main: HostGit, sha: str, branch: str) -> bool:
    """``sha`` is in the main repository and reachable from a branch other than ``branch``."""
    if main.git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode != 0:
        return False
    out = main.git("for-each-ref", "--contains", sha, "--format=%(refname)",
                   "refs/heads").stdout.split()
    return any(ref != f"refs/heads/{branch}" for ref in out)


def copy_listed_files(main: Path, dest: Path, patterns: Sequence[str]) -> list[str]:
    """Copy the untracked files the project lists (``copyToTasks``, globs allowed) into a new
    worktree: secrets such as ``.env``, or the locally built wheel of the local Features."""
    copied = []
    for pattern in patterns:
        rel_pattern = Path(pattern)
        if rel_pattern.is_absolute() or ".." in rel_pattern.parts:
            raise IsofeatError(f"copyToTasks: {pattern!r} must be a path inside the repository",
                               fix="list relative paths or patterns such as .env or *.whl")
        for src in sorted(main.glob(pattern)):
            rel = src.relative_to(main)
            if src.is_symlink() or not src.is_file():
                raise IsofeatError(f"copyToTasks: {rel} is not a regular file",
                                   fix="list regular files only (no folders or symlinks)")
            target = dest / rel
            if target.exists():
                continue  # tracked in the branch, or already there: never overwrite
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            copied.append(str(rel))
    return copied


def _check_box(main: HostGit, base: str, accept: bool, environ: Mapping[str, str],
               log: Log) -> None:
    """Refuse a base whose ``.devcontainer/`` is not the one the user approved."""
    tree = hostgit.devcontainer_tree(main, base)
    record = _state(main.workspace, environ) / APPROVED_BOX
    try:
        approved = record.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        approved = ""
    if approved and approved != tree and not accept:
        stat_text = ""
        if approved != "none" and tree != "none":
            stat_text = main.git("diff", "--stat", approved, tree, check=False).stdout.rstrip()
        raise IsofeatError(
            f"the base {base[:12]} has another .devcontainer/ than the one you approved "
            f"(tree {tree[:12]}, approved {approved[:12]}); a task would start in that box"
            + (f":\n{stat_text}" if stat_text else ""),
            fix=f"review it (git diff {approved[:12]} {tree[:12]}), then run again with "
                "--accept-devcontainer",
        )
    if approved != tree:
        record.parent.mkdir(parents=True, exist_ok=True)
        from isofeat.atomic import write_text

        write_text(record, f"{tree}\n")
        log(f"==> approved .devcontainer/ tree {tree[:12]} for new tasks")


def new(
    start: Path, name: str, base: str | None, up: bool, accept_devcontainer: bool = False,
    environ: Mapping[str, str] = os.environ, log: Log = _stderr,
) -> dict[str, object]:
    validate_name(name)
    main = main_repo(start)
    branch = f"{BRANCH_PREFIX}{name}"
    path = task_path(main, name)
    if os.path.lexists(path):
        raise IsofeatError(f"{path} already exists", fix=f"pick another name, or remove {path}")
    if _sha(main, f"refs/heads/{branch}"):
        raise IsofeatError(f"branch {branch} already exists",
                           fix=f"isofeat task rm {name}, or `git branch -d {branch}`")
    base_ref = base or "HEAD"
    if base_ref.startswith("-"):
        raise IsofeatError(f"--base {base_ref!r} is not a commit", fix="name a branch, tag or sha")
    base_sha = _sha(main, base_ref)
    if base_sha is None:
        raise IsofeatError(f"--base {base_ref!r} is not a commit", fix="name a branch, tag or sha")
    _check_box(main, base_sha, accept_devcontainer, environ, log)
    log(f"==> creating worktree {path} on {branch} from {base_ref}")
    main.git("worktree", "add", "--quiet", "-b", branch, str(path), base_sha)
    copied: list[str] = []
    box = Environment(main.workspace, environ).devcontainer
    if (box / SETTINGS_FILE).is_file():
        copied = copy_listed_files(main.workspace, path, read_settings(box).copy_to_tasks)
        if copied:
            log(f"==> copied {', '.join(copied)}")
    env_id = env_id_for(path)
    result: dict[str, object] = {
        "name": name, "path": str(path), "branch": branch, "base": base_sha,
        "env_id": env_id, "project": project_name(env_id), "copied": copied, "up": False,
    }
    if up:
        devcontainer_up(path, log)
        result["up"] = True
    return result


def devcontainer_up(path: Path, log: Callable[[str], None]) -> None:
    """``devcontainer up`` with its progress lines relayed, and a clear error if it fails."""
    exe = shutil.which("devcontainer")
    if exe is None:
        raise IsofeatError("the devcontainer CLI is not installed",
                           fix="npm install -g @devcontainers/cli")
    import tempfile

    log(f"==> devcontainer up --workspace-folder {path}")
    # A temporary folder of its own: the CLI stages each open's Features in
    # $TMPDIR/devcontainercli-$USER/container-features/<version>-<milliseconds>, so two opens
    # that reach that step in the same millisecond share one folder and break each other
    # ("Failed to fetch feature: ENOENT"; measured: 2 in 7 runs of three opens at once).
    with tempfile.TemporaryDirectory(prefix="isofeat-devcontainer-") as tmp:
        proc = subprocess.Popen(
            [exe, "up", "--workspace-folder", str(path), "--log-format", "text"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "TMPDIR": tmp},
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                log(f"    {line[:200]}")
        proc.wait()
    if proc.returncode != 0:
        raise IsofeatError(
            f"devcontainer up failed for {path} (exit {proc.returncode})",
            fix="read the output above; `isofeat task rm NAME --force` cleans up", code=1,
        )


def _docker() -> Any:
    import docker

    return docker.from_env()


def _project_filter(project: str) -> dict[str, list[str]]:
    return {"label": [f"com.docker.compose.project={project}"]}


def running(project: str, client: Any | None = None) -> bool:
    try:
        client = client or _docker()
        return bool(client.containers.list(filters=_project_filter(project)))
    except Exception:  # no engine: nothing runs
        return False


def list_tasks(start: Path, environ: Mapping[str, str] = os.environ) -> list[dict[str, object]]:
    from isofeat.notify import count_pending

    main = main_repo(start)
    client = None
    with contextlib.suppress(Exception):  # no engine answers: every task shows as stopped
        client = _docker()
    tasks = []
    for wt in _worktrees(main):
        ref = wt.get("branch", "")
        if not ref.startswith(f"refs/heads/{BRANCH_PREFIX}"):
            continue
        path = Path(wt["worktree"])
        env_id = env_id_for(path)
        branch = ref.removeprefix("refs/heads/")
        counts = main.git("rev-list", "--left-right", "--count", f"HEAD...{ref}",
                          check=False).stdout.split()
        behind, ahead = (int(n) for n in counts) if len(counts) == 2 else (0, 0)
        # The sandbox's own tip, read as data; it may be ahead of the host's branch.
        agent_head = hostgit.read_agent_refs(agent_git(path, environ)).get(ref)
        tasks.append({
            "name": branch.removeprefix(BRANCH_PREFIX), "path": str(path), "branch": branch,
            "ahead": ahead, "behind": behind, "env_id": env_id,
            "agent_head": agent_head,
            "unmerged": bool(agent_head) and not _merged_elsewhere(main, agent_head or "", branch),
            "running": running(project_name(env_id), client) if client else False,
            "pending_notifications": count_pending(env_id, environ),
        })
    return tasks


def remove_environment(project: str, log: Callable[[str], None]) -> dict[str, int]:
    """Remove every container, network and volume of exactly this Compose project."""
    counts = {"containers": 0, "networks": 0, "volumes": 0}
    try:
        client = _docker()
        client.ping()
    except Exception:
        log("    no Docker engine answers; no containers to remove")
        return counts
    flt = _project_filter(project)
    for container in client.containers.list(all=True, filters=flt):
        container.remove(force=True, v=True)
        counts["containers"] += 1
    for network in client.networks.list(filters=flt):
        network.remove()
        counts["networks"] += 1
    for volume in client.volumes.list(filters=flt):
        volume.remove(force=True)
        counts["volumes"] += 1
    return counts


def rm(
    start: Path, name: str, force: bool, environ: Mapping[str, str] = os.environ,
    log: Log = _stderr,
) -> dict[str, object]:
    """Remove a task; without --force, refuse when work would be lost (nothing removed then).

    The environment is found by the project name of the task's path, not by anything the
    sandbox could write, so a task whose git the agent broke is still removed whole.
    """
    from isofeat import quickinit
    from isofeat.notify import remove_env_notify_dir

    validate_name(name)
    main = main_repo(start)
    wt = find_task(main, name)
    branch = f"{BRANCH_PREFIX}{name}"
    host_tip = _sha(main, f"refs/heads/{branch}")
    path = Path(wt["worktree"]) if wt else task_path(main, name)
    project = project_name(env_id_for(path))
    state = _state(path, environ)
    if wt is None and host_tip is None and not state.exists():
        raise IsofeatError(f"no task named {name!r}", fix="see `isofeat task list`")
    if not force:
        agent_tip = hostgit.read_agent_refs(state / "git").get(f"refs/heads/{branch}")
        # The sandbox's commits live only in its own git, which goes with the state folder.
        # (The host's branch is kept when unmerged, as before.)
        lost = []
        if agent_tip and agent_tip != host_tip and not _merged_elsewhere(main, agent_tip, branch):
            lost.append(f"the sandbox's {branch} at {agent_tip[:12]} is in no other branch")
        if wt is not None and path.is_dir():
            try:
                task_git = hostgit.verify(path)
            except IsofeatError as err:
                lost.append(f"its worktree's git cannot be verified ({err.message})")
            else:
                dirty = task_git.git("status", "--porcelain", check=False) if task_git else None
                if dirty is None or dirty.returncode != 0:
                    lost.append(f"git cannot read the state of {path}")
                # The sandbox cannot write .devcontainer/ (read-only there); what is new in
                # it the host made (the devcontainer CLI's lock file, say).
                elif paths := [line[3:] for line in dirty.stdout.splitlines()
                               if not line[3:].startswith(".devcontainer/")][:5]:
                    lost.append(f"{path} has changes that no commit of {branch} holds "
                                f"({', '.join(paths)})")
        if lost:
            raise IsofeatError(
                f"task {name}: " + "; ".join(lost),
                fix=f"isofeat task merge {name} first, or isofeat task rm {name} --force "
                    "to throw the work away",
            )
    result: dict[str, object] = {"name": name, "branch_deleted": False}
    log(f"==> removing the containers, networks and volumes of {project}")
    result["removed"] = remove_environment(project, log)
    remove_env_notify_dir(env_id_for(path), environ)
    # The warm-open stamp of `isofeat init` in that worktree: useless once it is gone.
    quickinit.forget(str(path.resolve()), environ)
    if state.is_dir() and not state.is_symlink():
        shutil.rmtree(state)
    if wt is not None:
        log(f"==> removing worktree {path}")
        main.git("worktree", "remove", "--force", "--force", str(path), check=False)
        result["path"] = str(path)
    main.git("worktree", "prune", check=False)
    if host_tip is not None:
        if force or _merged_elsewhere(main, host_tip, branch):
            main.git("branch", "-D", branch)
            result["branch_deleted"] = True
            log(f"==> deleted branch {branch}")
        else:
            log(f"==> kept branch {branch}: not merged (isofeat task merge {name}, or --force)")
    return result


def _current_branch(main: HostGit) -> str:
    head = main.git("symbolic-ref", "-q", "--short", "HEAD", check=False)
    if head.returncode != 0:
        raise IsofeatError(
            f"{main.workspace} is on a detached HEAD: a merge would make a commit no branch holds",
            fix="check out the branch to merge into (git switch main), then run this again",
        )
    return head.stdout.strip()


def _refuse_host_tool_changes(main: HostGit, tip: str, what: str, allow: bool) -> list[str]:
    hits = hostgit.host_tool_paths(hostgit.changed_paths(main, "HEAD", tip))
    if hits and not allow:
        raise IsofeatError(
            f"{what} changes files that host tools act on by themselves (IDE tasks and "
            f"settings, git attributes and hooks, shell and agent config, CI): "
            f"{', '.join(hits)}",
            fix=f"review `git diff HEAD...{tip} -- {' '.join(hits[:8])}`, then pass "
                "--allow-devcontainer-changes",
        )
    return hits


def merge(start: Path, name: str, allow_devcontainer: bool,
          environ: Mapping[str, str] = os.environ, log: Log = _stderr) -> dict[str, object]:
    validate_name(name)
    main = main_repo(start)
    branch = f"{BRANCH_PREFIX}{name}"
    if _sha(main, f"refs/heads/{branch}") is None:
        raise IsofeatError(f"no task branch {branch}", fix="see `isofeat task list`")
    into = _current_branch(main)
    if main.git("status", "--porcelain").stdout.strip():
        raise IsofeatError(
            f"{main.workspace} has uncommitted changes",
            fix="commit or stash them first; a merge must not mix with work in progress",
        )
    wt = find_task(main, name)
    path = Path(wt["worktree"]) if wt else task_path(main, name)
    source = f"refs/heads/{branch}"
    imported = hostgit.import_refs(
        main, agent_git(path, environ), {source: f"{IMPORT_PREFIX}{name}"},
        scratch=_state(main.workspace, environ), environ=environ)
    if imported:
        source = f"{IMPORT_PREFIX}{name}"
        log(f"==> fetched the sandbox's {branch} ({imported[source][:12]})")
    hits = _refuse_host_tool_changes(main, source, branch, allow_devcontainer)
    tip = _sha(main, source) or ""
    done = main.git("merge", "--no-ff", "--no-edit", "-m", f"Merge task {name}", source,
                    check=False)
    if done.returncode != 0:
        conflicts = main.git("diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
        main.git("merge", "--abort", check=False)
        raise IsofeatError(
            f"merging {branch} into {into} stopped"
            + (f" on conflicts in {', '.join(conflicts)}" if conflicts else
               f": {(done.stderr or done.stdout).strip()[:300]}")
            + "; nothing was changed",
            fix=f"merge by hand: git merge {source} (resolve, commit), or rebase the task in "
                "its sandbox onto the new base and run this again",
        )
    # The host's task branch and its worktree's index follow what was merged, so that
    # `task rm` sees the work is safe (the worktree's files are already the sandbox's).
    main.git("update-ref", f"refs/heads/{branch}", tip)
    task_git = hostgit.verify(path) if wt is not None and path.is_dir() else None
    if task_git is not None:
        task_git.git("reset", "--quiet", "--mixed", tip, check=False)
    if hits:
        _check_box(main, "HEAD", True, environ, log)
    return {"name": name, "branch": branch, "merged_into": into, "merged": tip,
            "head": _sha(main, "HEAD"), "host_tool_changes": hits}


def fetch(start: Path, environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """Bring the sandbox's branches of a directly opened project in as ``sandbox/*``."""
    host = _enclosing_git(start, fix="run this in the project folder you opened in the sandbox")
    agent = agent_git(host.workspace, environ)
    refs = hostgit.read_agent_refs(agent)
    wanted = {ref: "refs/remotes/sandbox/" + ref.removeprefix("refs/heads/")
              for ref in refs if ref.startswith("refs/heads/")}
    got = hostgit.import_refs(host, agent, wanted, scratch=_state(host.workspace, environ),
                              environ=environ)
    report = {}
    for dest in sorted(got):
        short = dest.removeprefix("refs/remotes/")
        report[short] = {"sha": got[dest], "host_tool_changes": hostgit.host_tool_paths(
            hostgit.changed_paths(host, "HEAD", dest))}
    return {"workspace": str(host.workspace), "agent_git": str(agent), "branches": report}

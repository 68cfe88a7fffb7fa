"""``isofeat task``: one git worktree and one sandbox environment per task.

A task NAME is a worktree beside the repository (``../<repo>-<NAME>``) on the branch
``task/<NAME>``. Its environment is the Compose project ``isofeat-<env id>`` that
``isofeat init`` derives from the worktree's real path, so tasks never share containers,
networks or volumes, and removing one selects its resources by that exact project label.
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

from isofeat.envinit import env_id_for, project_name, read_settings, state_root
from isofeat.errors import IsofeatError

BRANCH_PREFIX = "task/"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,47}")


def validate_name(name: str) -> str:
    """A task name becomes a folder name and a branch name: keep it boring (exit 2 if not)."""
    fix = "use 1-48 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    if not _NAME.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise IsofeatError(f"bad task name {name!r}", fix=fix)
    return name


def _repo(start: Path) -> Any:
    import git  # GitPython; heavy, so only task verbs import it

    try:
        repo = git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise IsofeatError(f"{start}: not inside a git repository",
                           fix="run isofeat task in your project's repository") from None
    # From a linked worktree, tasks still belong to the main repository.
    common = Path(repo.git.rev_parse("--path-format=absolute", "--git-common-dir"))
    main = common.parent if common.name == ".git" else Path(repo.working_tree_dir or start)
    return git.Repo(main)


def task_path(repo: Any, name: str) -> Path:
    main = Path(repo.working_tree_dir)
    return main.parent / f"{main.name}-{name}"


def _worktrees(repo: Any) -> list[dict[str, str]]:
    """``git worktree list --porcelain`` as dicts (path, branch, head)."""
    items: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in repo.git.worktree("list", "--porcelain").splitlines():
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


def find_task(repo: Any, name: str) -> dict[str, str] | None:
    branch = f"refs/heads/{BRANCH_PREFIX}{name}"
    for wt in _worktrees(repo):
        if wt.get("branch") == branch:
            return wt
    return None


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


def new(
    start: Path, name: str, base: str | None, up: bool,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, object]:
    validate_name(name)
    repo = _repo(start)
    branch = f"{BRANCH_PREFIX}{name}"
    path = task_path(repo, name)
    if path.exists():
        raise IsofeatError(f"{path} already exists", fix=f"pick another name, or remove {path}")
    if branch in [h.name for h in repo.heads]:
        raise IsofeatError(f"branch {branch} already exists",
                           fix=f"isofeat task rm {name}, or `git branch -d {branch}`")
    base_ref = base or repo.head.commit.hexsha
    try:
        repo.commit(base_ref)
    except Exception:  # gitdb raises several types for a bad ref
        raise IsofeatError(
            f"--base {base_ref!r} is not a commit", fix="name a branch, tag or sha"
        ) from None
    log(f"==> creating worktree {path} on {branch} from {base_ref}")
    repo.git.worktree("add", "-b", branch, str(path), base_ref)
    main = Path(repo.working_tree_dir)
    copied: list[str] = []
    settings_file = main / ".devcontainer" / "isofeat.json"
    if settings_file.is_file():
        copied = copy_listed_files(main, path, read_settings(main / ".devcontainer").copy_to_tasks)
        if copied:
            log(f"==> copied {', '.join(copied)}")
    env_id = env_id_for(path)
    result: dict[str, object] = {
        "name": name, "path": str(path), "branch": branch, "base": base_ref,
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
    log(f"==> devcontainer up --workspace-folder {path}")
    proc = subprocess.Popen(
        [exe, "up", "--workspace-folder", str(path), "--log-format", "text"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        if line:
            log(f"    {line[:200]}")
    if proc.wait() != 0:
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

    repo = _repo(start)
    base = repo.head.commit
    client = None
    with contextlib.suppress(Exception):  # no engine answers: every task shows as stopped
        client = _docker()
    tasks = []
    for wt in _worktrees(repo):
        ref = wt.get("branch", "")
        if not ref.startswith(f"refs/heads/{BRANCH_PREFIX}"):
            continue
        path = Path(wt["worktree"])
        env_id = env_id_for(path)
        branch = ref.removeprefix("refs/heads/")
        behind, ahead = (int(n) for n in repo.git.rev_list(
            "--left-right", "--count", f"{base.hexsha}...{branch}").split())
        tasks.append({
            "name": branch.removeprefix(BRANCH_PREFIX), "path": str(path), "branch": branch,
            "ahead": ahead, "behind": behind, "env_id": env_id,
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
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, object]:
    from isofeat.notify import remove_env_notify_dir

    validate_name(name)
    repo = _repo(start)
    wt = find_task(repo, name)
    branch = f"{BRANCH_PREFIX}{name}"
    if wt is None and branch not in [h.name for h in repo.heads]:
        raise IsofeatError(f"no task named {name!r}", fix="see `isofeat task list`")
    result: dict[str, object] = {"name": name, "branch_deleted": False}
    if wt is not None:
        path = Path(wt["worktree"])
        project = project_name(env_id_for(path))
        log(f"==> removing the containers, networks and volumes of {project}")
        result["removed"] = remove_environment(project, log)
        remove_env_notify_dir(env_id_for(path), environ)
        state = state_root(environ) / env_id_for(path)
        if state.is_dir() and not state.is_symlink():
            shutil.rmtree(state)
        log(f"==> removing worktree {path}")
        args = ["remove", str(path)] + (["--force", "--force"] if force else [])
        try:
            repo.git.worktree(*args)
        except Exception as err:  # git says why (dirty tree, locked)
            raise IsofeatError(
                f"git refused to remove {path}: {getattr(err, 'stderr', err)}",
                fix=f"commit or discard its changes, or isofeat task rm {name} --force",
            ) from None
        result["path"] = str(path)
    merged = repo.git.branch("--merged", "HEAD", "--list", branch).strip() != ""
    if merged or force:
        repo.git.branch("-D" if force else "-d", branch)
        result["branch_deleted"] = True
        log(f"==> deleted branch {branch}")
    else:
        log(f"==> kept branch {branch}: not merged (isofeat task merge {name}, or --force)")
    return result


def merge(start: Path, name: str, allow_devcontainer: bool) -> dict[str, object]:
    validate_name(name)
    repo = _repo(start)
    branch = f"{BRANCH_PREFIX}{name}"
    if branch not in [h.name for h in repo.heads]:
        raise IsofeatError(f"no task branch {branch}", fix="see `isofeat task list`")
    if repo.is_dirty(untracked_files=True):
        raise IsofeatError(
            f"{repo.working_tree_dir} has uncommitted changes",
            fix="commit or stash them first; a merge must not mix with work in progress",
        )
    # The agent cannot write .devcontainer/ in its sandbox, but it can commit changes to it
    # with git plumbing. Such a merge would rewrite the box of every later task.
    guarded = repo.git.diff("--name-only", f"HEAD...{branch}", "--",
                            ".devcontainer", ".gitattributes", ".gitmodules").split()
    if guarded and not allow_devcontainer:
        raise IsofeatError(
            f"{branch} changes the environment's own definition: {', '.join(guarded)}",
            fix=f"review `git diff HEAD...{branch} -- .devcontainer`, then pass "
                "--allow-devcontainer-changes",
        )
    repo.git.merge("--no-ff", "--no-edit", branch)
    return {"name": name, "branch": branch, "merged_into": repo.active_branch.name,
            "head": repo.head.commit.hexsha}

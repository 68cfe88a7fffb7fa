"""The git boundary from inside (issue 9): the agent, uid 1001 in a real task environment,
attacks the user's repository, the other task and the host; its work still comes back.

One environment (task ``a``) is brought up with the real devcontainer CLI. Before it starts,
the worktree and the agent's git are handed to uid 1000, the usual laptop owner, so git's
ownership check is exercised as users meet it (the directly opened, root-owned case is in
test_template_up.py). What must not change is snapshotted on the host before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from isofeat.layout import env_id_for, project_name
from isofeat.tasks import remove_environment

from .test_main_job import bake, host_env, need, run_in, up

pytestmark = pytest.mark.docker


def isofeat(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isofeat", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=1800)


def host_git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Mode, owner, group and content digest of every path under ``root`` (links as links)."""
    out = {}
    for path in sorted([root, *root.rglob("*")]):
        st = os.lstat(path)
        digest = ""
        if path.is_symlink():
            digest = os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


def chown_tree(root: Path, uid: int, skip: str | None = None, only: int | None = None) -> None:
    """Give ``root`` to ``uid`` (all of it, or only what ``only`` owns; ``skip`` at the top)."""
    for folder, dirs, files in os.walk(root):
        if skip is not None and folder == str(root):
            dirs[:] = [d for d in dirs if d != skip]
            files = [f for f in files if f != skip]
        for path in [folder, *(os.path.join(folder, n) for n in files)]:
            if only is None or os.lstat(path).st_uid == only:
                os.lchown(path, uid, -1)


# Runs in the sandbox as the agent. Each attack prints what happened; the test asserts on it.
# @MAIN_GIT@, @CANARY@ and @DECOY@ are host paths, filled in by the test.
ATTACKS = r"""
set -u
say() { printf '%s\n' "$*"; }
main_git=@MAIN_GIT@
canary=@CANARY@
decoy=@DECOY@
cd /workspace
say "uid=$(id -u) owner=$(stat -c %u /workspace) gitowner=$(stat -c %u /run/isofeat/git)"

# --- git works for the agent: status, diff, commit, log, branch, stash, rebase
git status --porcelain >/dev/null && say "git-status=ok"
echo work > work.txt && git add work.txt && git commit -qm "agent: work" && say "git-commit=ok"
git diff HEAD~1 --stat | grep -q work.txt && say "git-diff=ok"
git log --oneline | grep -q "agent: work" && say "git-log=ok"
git branch side && git branch --list side | grep -q side && say "git-branch=ok"
echo wip >> work.txt && git stash -q && test "$(cat work.txt)" = work && git stash pop -q \
  && grep -q wip work.txt && git checkout -q -- work.txt && say "git-stash=ok"
echo more > more.txt && git add more.txt && git commit -qm "agent: more"
git checkout -q side && echo s > side.txt && git add side.txt && git commit -qm side \
  && git rebase -q task/a && git log --format=%s -3 | grep -q "agent: more" \
  && git checkout -q task/a && git branch -D -q side && say "git-rebase=ok"
git checkout -q task/a
gd=$(git rev-parse --absolute-git-dir)
say "gitdir=$gd"

# --- 1: the user's git is not here; its objects are read-only
test -e "$main_git" && say "SEES-MAIN-GIT" || say "main-git=absent"
touch /run/isofeat/git-objects/planted 2>/dev/null && say "WROTE-OBJECTS" || say "objects=read-only"
mkdir /run/isofeat/git-objects/ab 2>/dev/null && say "WROTE-OBJECTS-DIR" || true
# --- 2: rename or replace .git, or point it anywhere
mv /workspace/.git /workspace/.git-moved 2>/dev/null && say "MOVED-DOT-GIT" || say "dot-git=pinned"
printf 'gitdir: %s\n' "$decoy" > /workspace/.git 2>/dev/null && say "WROTE-POINTER" \
  || say "pointer=read-only"
mv /run/isofeat/git /run/isofeat/git-moved 2>/dev/null && say "MOVED-AGENT-GIT" \
  || say "agent-git=pinned"
# --- the agent's own git is its own: plant everything git would run or follow on the host
printf '[core]\n\tfsmonitor = "touch %s; echo 0 #"\n\thooksPath = /tmp\n' "$canary" >> "$gd/config"
mkdir -p "$gd/hooks" && printf '#!/bin/sh\ntouch %s\n' "$canary" > "$gd/hooks/post-merge"
chmod +x "$gd/hooks/post-merge"
ln -s "$decoy/config" "$gd/refs/heads/stolen"
# --- 6: files that host tools act on, committed with plain porcelain
mkdir -p .vscode sub
printf '{"tasks":[{"runOptions":{"runOn":"folderOpen"}}]}' > .vscode/tasks.json
printf '* filter=evil\n' > sub/.gitattributes
git add .vscode/tasks.json sub/.gitattributes && git commit -qm "agent: box" && say "box-commit=ok"
# Last, as it breaks the agent's own git until removed: commondir names a host folder.
printf '%s\n' "$decoy" > "$gd/commondir"
say "planted=done"
# --- the workspace beyond git: .devcontainer stays read-only
touch .devcontainer/planted 2>/dev/null && say "WROTE-DEVCONTAINER" || say "devcontainer=read-only"
say done
"""


def test_the_agent_cannot_touch_the_users_git_and_its_work_comes_back(
    tmp_path: Path, base_image: str, proxy_image: str, security_report: Any,
) -> None:
    need("devcontainer")
    env = host_env(tmp_path)
    repo = bake(tmp_path / "repo", env)
    decoy = tmp_path / "home" / ".kube"
    decoy.mkdir(parents=True, mode=0o700)
    (decoy / "config").write_text("token: s3cret\n")
    os.chmod(decoy / "config", 0o600)
    canary = tmp_path / "canary"

    for name in ("a", "b"):
        made = isofeat("task", "new", name, cwd=repo, env=env)
        assert made.returncode == 0, made.stderr
    ws = tmp_path / "repo-a"
    assert isofeat("init", str(ws), cwd=ws, env=env).returncode == 0
    agent_git = tmp_path / "state" / "isofeat" / "envs" / env_id_for(ws) / "git"
    assert agent_git.is_dir()
    # The laptop case: the host user is uid 1000, not the agent's 1001.
    chown_tree(ws, 1000, skip=".git")
    chown_tree(agent_git, 1000)
    main_git = repo / ".git"
    before = {"main": snapshot(main_git), "b": snapshot(tmp_path / "repo-b"),
              "decoy": snapshot(decoy)}
    project = project_name(env_id_for(ws))
    try:
        up(ws, env)
        doctor = run_in(ws, env, "isofeat doctor --json")
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks.get("git", {}).get("ok"), (doctor.stdout[-3000:], doctor.stderr[-2000:])

        script = (ATTACKS.replace("@MAIN_GIT@", str(main_git))
                  .replace("@CANARY@", str(canary)).replace("@DECOY@", str(decoy)))
        result = run_in(ws, env, script)
        out = result.stdout
        assert "done" in out, (out, result.stderr[-3000:])
        assert "uid=1001 owner=1000 gitowner=1000" in out
        for step in ("status", "commit", "diff", "log", "branch", "stash", "rebase"):
            assert f"git-{step}=ok" in out, (step, out, result.stderr[-2000:])
        for held in ("main-git=absent", "objects=read-only", "dot-git=pinned",
                     "pointer=read-only", "agent-git=pinned", "devcontainer=read-only"):
            assert held in out, (held, out)
        for broke in ("SEES-MAIN-GIT", "WROTE-OBJECTS", "MOVED-", "WROTE-POINTER",
                      "WROTE-DEVCONTAINER"):
            assert broke not in out, (broke, out)
        assert "planted=done" in out and "box-commit=ok" in out

        # The host side, after the agent planted its traps. It runs as root here, so the
        # worktree goes back to the host's uid (git refuses a worktree of another owner).
        chown_tree(ws, os.getuid(), skip=".git", only=1000)
        # The user's own git in the task folder, list, merge (refused: .vscode and a nested
        # .gitattributes), init again.
        host_git("status", "--porcelain", cwd=ws)
        listed = isofeat("task", "list", "--json", cwd=repo, env=env)
        assert listed.returncode == 0, listed.stderr
        (task_a,) = [t for t in json.loads(listed.stdout) if t["name"] == "a"]
        assert task_a["unmerged"] is True and task_a["running"] is True
        refused = isofeat("task", "merge", "a", cwd=repo, env=env)
        assert refused.returncode == 2, refused.stderr
        assert ".vscode/tasks.json" in refused.stderr and "sub/.gitattributes" in refused.stderr
        assert isofeat("init", str(ws), cwd=ws, env=env).returncode == 0
        assert isofeat("task", "rm", "a", cwd=repo, env=env).returncode == 2  # unmerged work

        # The agent drops the box commit; the good work then reaches main.
        dropped = run_in(ws, env, 'cd /workspace && rm "$(git rev-parse --absolute-git-dir '
                         '2>/dev/null || echo /run/isofeat/git)/commondir"; '
                         "git reset -q --hard HEAD~1 && echo reset")
        assert "reset" in dropped.stdout, dropped.stderr
        merged = isofeat("task", "merge", "a", "--json", cwd=repo, env=env)
        assert merged.returncode == 0, merged.stderr
        assert (repo / "work.txt").read_text() == "work\n"
        assert "agent: work" in host_git("log", "--format=%s", cwd=repo)
        assert not (repo / ".vscode").exists()

        assert not canary.exists(), "a command planted by the agent ran on the host"
        assert snapshot(decoy) == before["decoy"]
        assert snapshot(tmp_path / "repo-b") == before["b"]
        after_main = snapshot(main_git)
        # Only what the host's own merge wrote changed in the user's git.
        changed = {k for k in set(after_main) | set(before["main"])
                   if after_main.get(k) != before["main"].get(k)}
        unexpected = {k for k in changed if not k.startswith(
            ("objects/", "refs/heads/main", "refs/heads/task/a", "refs/isofeat", "logs/",
             "index", "ORIG_HEAD", "worktrees/repo-a/index", "worktrees/repo-a/logs",
             "worktrees/repo-a/ORIG_HEAD"))}
        assert not unexpected, unexpected
        assert "hooks/post-merge" not in after_main
        security_report.many("attack", [
            *(("22", f"agent in task a: {held.split('=')[0]}", held, held,
               held in out) for held in ("main-git=absent", "objects=read-only",
                                         "dot-git=pinned", "pointer=read-only",
                                         "agent-git=pinned", "devcontainer=read-only")),
            ("22", "merge of a branch that plants .vscode/tasks.json and a nested "
             ".gitattributes", "exit 2 naming both", f"exit {refused.returncode}",
             refused.returncode == 2),
            ("22", "hooks, fsmonitor and filters planted for the host's git", "never run",
             "ran" if canary.exists() else "not run", not canary.exists()),
            ("22", "another task's repository (repo-b) and a decoy folder", "unchanged",
             "unchanged", snapshot(tmp_path / "repo-b") == before["b"]
             and snapshot(decoy) == before["decoy"]),
            ("22", "the user's git after merge", "only the merge's own files changed",
             sorted(unexpected) or "as expected", not unexpected),
        ])

        removed = isofeat("task", "rm", "a", cwd=repo, env=env)
        assert removed.returncode == 0, removed.stderr
        assert not ws.exists() and not agent_git.exists()
    finally:
        remove_environment(project, lambda _m: None)
    assert not canary.exists()

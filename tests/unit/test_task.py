"""``isofeat task`` on real git repositories (the environments are in tests/docker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from isofeat.cli import main


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@t.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@t.invalid")
    root = tmp_path / "proj"
    (root / ".devcontainer").mkdir(parents=True)
    (root / ".devcontainer" / "isofeat.json").write_text(
        json.dumps({"copyToTasks": [".env", "wheels/*.whl"]})
    )
    (root / ".gitignore").write_text(".env\nwheels/\n")
    (root / "app.py").write_text("print('hi')\n")
    git("init", "-q", "-b", "main", cwd=root)
    git("add", ".", cwd=root)
    git("commit", "-qm", "init", cwd=root)
    (root / ".env").write_text("SECRET=local\n")
    (root / "wheels").mkdir()
    (root / "wheels" / "isofeat-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> tuple[str, str, list[str]]:
    return (git("worktree", "list", cwd=root), git("branch", "--list", cwd=root),
            sorted(p.name for p in root.parent.iterdir()))


@pytest.mark.parametrize(
    "name",
    ["../x", "/abs", "a b", "line\nbreak", "--force", "-x", "UPPER", "a..b", "x.lock", "", ".",
     "a/b", "x" * 49, "tab\there", "semi;colon", "$(id)"],
)
def test_bad_names_exit_2_and_create_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    before = snapshot(repo)
    # As typed (an option-like name is an argparse usage error), and after "--".
    assert main(["task", "new", name]) == 2
    assert main(["task", "new", "--", name]) == 2
    assert "bad task name" in capsys.readouterr().err
    assert snapshot(repo) == before
    assert main(["task", "rm", "--", name]) == 2
    assert main(["task", "merge", "--", name]) == 2
    assert snapshot(repo) == before


def test_new_creates_worktree_branch_and_copies_listed_files(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["task", "new", "demo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    path = repo.parent / "proj-demo"
    assert result["path"] == str(path) and result["branch"] == "task/demo"
    assert (path / "app.py").is_file()
    assert (path / ".env").read_text() == "SECRET=local\n"
    assert result["copied"] == [".env", "wheels/isofeat-0.1.0-py3-none-any.whl"]
    assert (path / "wheels" / "isofeat-0.1.0-py3-none-any.whl").read_bytes() == b"PK"
    assert "task/demo" in git("branch", "--list", cwd=repo)
    assert main(["task", "new", "demo"]) == 2  # exists already
    assert "already exists" in capsys.readouterr().err


def test_list_shows_ahead_and_behind(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task", "new", "a"]) == 0
    wt = repo.parent / "proj-a"
    (wt / "new.txt").write_text("x\n")
    git("add", "new.txt", cwd=wt)
    git("commit", "-qm", "task work", cwd=wt)
    (repo / "other.txt").write_text("y\n")
    git("add", "other.txt", cwd=repo)
    git("commit", "-qm", "main work", cwd=repo)
    capsys.readouterr()
    assert main(["task", "list", "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert (item["name"], item["ahead"], item["behind"]) == ("a", 1, 1)
    assert item["running"] is False and item["pending_notifications"] == 0


def test_rm_keeps_an_unmerged_branch_and_force_deletes_it(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["task", "new", "t1"]) == 0
    wt = repo.parent / "proj-t1"
    (wt / "f.txt").write_text("x\n")
    git("add", "f.txt", cwd=wt)
    git("commit", "-qm", "work", cwd=wt)
    assert main(["task", "rm", "t1"]) == 0
    assert not wt.exists()
    assert "task/t1" in git("branch", "--list", cwd=repo)  # unmerged: kept
    assert main(["task", "rm", "t1", "--force"]) == 0
    assert "task/t1" not in git("branch", "--list", cwd=repo)
    assert "proj-t1" not in git("worktree", "list", cwd=repo)


def test_rm_drops_the_warm_open_stamp_of_the_worktree(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from isofeat import quickinit

    assert main(["task", "new", "t1"]) == 0
    wt = repo.parent / "proj-t1"
    monkeypatch.chdir(wt)
    assert main(["init"]) == 0  # a plain init records the stamp
    stamp = Path(quickinit.stamp_path(str(wt.resolve()), os.environ))
    assert stamp.is_file()
    monkeypatch.chdir(repo)
    assert main(["task", "rm", "t1", "--force"]) == 0
    assert not stamp.exists()


def test_rm_refuses_a_dirty_worktree_without_force(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["task", "new", "dirty"]) == 0
    wt = repo.parent / "proj-dirty"
    (wt / "app.py").write_text("changed\n")
    assert main(["task", "rm", "dirty"]) == 2
    assert "has changes that no commit of task/dirty holds" in capsys.readouterr().err
    assert wt.exists()
    assert main(["task", "rm", "dirty", "--force"]) == 0
    assert not wt.exists()


def test_merge_brings_the_task_in_and_rm_then_deletes_the_merged_branch(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["task", "new", "feat"]) == 0
    wt = repo.parent / "proj-feat"
    (wt / "feature.txt").write_text("done\n")
    git("add", "feature.txt", cwd=wt)
    git("commit", "-qm", "feature", cwd=wt)
    assert main(["task", "merge", "feat"]) == 0
    assert (repo / "feature.txt").read_text() == "done\n"
    assert main(["task", "rm", "feat"]) == 0
    assert "task/feat" not in git("branch", "--list", cwd=repo)


def test_merge_refuses_a_dirty_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task", "new", "x"]) == 0
    (repo / "app.py").write_text("wip\n")
    assert main(["task", "merge", "x"]) == 2
    assert "uncommitted changes" in capsys.readouterr().err


def test_merge_refuses_changes_to_the_environment_definition(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent cannot write .devcontainer/, but it can commit to it with git plumbing."""
    assert main(["task", "new", "sneaky"]) == 0
    wt = repo.parent / "proj-sneaky"
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=wt, input="*\n",
                          text=True, capture_output=True, check=True).stdout.strip()
    git("update-index", "--add", "--cacheinfo", f"100644,{blob},.devcontainer/whitelist.txt",
        cwd=wt)
    git("commit", "-qm", "innocent", cwd=wt)
    assert main(["task", "merge", "sneaky"]) == 2
    assert ".devcontainer/whitelist.txt" in capsys.readouterr().err
    assert not (repo / ".devcontainer" / "whitelist.txt").exists()
    assert main(["task", "merge", "sneaky", "--allow-devcontainer-changes"]) == 0

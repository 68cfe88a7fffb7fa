"""``isofeat init`` on real folders and real git repositories and worktrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isofeat.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout


def project(root: Path, whitelist: str = "extra.example.org\n") -> Path:
    (root / ".devcontainer").mkdir(parents=True)
    (root / ".devcontainer" / "whitelist.txt").write_text(whitelist)
    git("init", "-q", "-b", "main", cwd=root)
    (root / "README").write_text("x\n")
    git("add", "README", cwd=root)
    git("commit", "-qm", "init", cwd=root)
    return root


def run_init(workspace: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["init", str(workspace), "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def env_file(workspace: Path) -> dict[str, str]:
    lines = (workspace / ".devcontainer" / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_init_writes_env_and_renders_both_proxies(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = project(tmp_path / "my project")
    result = run_init(ws, capsys)
    env = env_file(ws)
    assert env["COMPOSE_PROJECT_NAME"] == f"isofeat-{result['env_id']}"
    assert str(result["env_id"]).startswith("my-project-")
    state = Path(env["ISOFEAT_PROXY_CONF"].strip("'"))
    assert r"^extra\.example\.org:443$" in (state / "filter").read_text()
    dind = Path(env["ISOFEAT_DIND_PROXY_CONF"].strip("'"))
    assert "registry-1" in (dind / "filter").read_text()
    assert f"Allow {env['ISOFEAT_DIND_SUBNET']}" in (dind / "tinyproxy.conf").read_text()
    # The agent commits into a git of its own, mounted over /workspace/.git; the user's .git
    # is seen only through its objects, read-only.
    assert env["ISOFEAT_GIT_DIR_TARGET"] == "/workspace/.git"
    assert Path(env["ISOFEAT_GIT_DIR"].strip("'")) == Path(result["state_dir"]) / "git"
    assert env["ISOFEAT_GIT_OBJECTS"].strip("'") == str(ws.resolve() / ".git" / "objects")
    assert env["ISOFEAT_GIT_POINTER_TARGET"] == "/run/isofeat/no-git-pointer"
    notify = Path(env["ISOFEAT_NOTIFY_HOST_DIR"].strip("'"))
    assert notify.is_dir()
    # The state folder is outside the workspace: the agent cannot read upstream credentials.
    assert not str(state).startswith(str(ws))


def test_init_is_idempotent_and_touches_nothing_the_second_time(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = project(tmp_path / "p")
    first = run_init(ws, capsys)
    env_path = ws / ".devcontainer" / ".env"
    conf = Path(env_file(ws)["ISOFEAT_PROXY_CONF"]) / "filter"
    stamps = (env_path.stat().st_mtime_ns, conf.stat().st_mtime_ns)
    second = run_init(ws, capsys)
    assert first["changed"] is True and second["changed"] is False
    assert first["env_id"] == second["env_id"]
    assert (env_path.stat().st_mtime_ns, conf.stat().st_mtime_ns) == stamps


def test_a_whitelist_change_is_rendered_on_the_next_init(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = project(tmp_path / "p")
    run_init(ws, capsys)
    (ws / ".devcontainer" / "whitelist.txt").write_text("later.example.org\n")
    run_init(ws, capsys)
    filt = (Path(env_file(ws)["ISOFEAT_PROXY_CONF"]) / "filter").read_text()
    assert "later" in filt and "extra" not in filt
    # The user's global layer counts too.
    glob = home / "config" / "isofeat" / "whitelist.txt"
    glob.parent.mkdir(parents=True)
    glob.write_text("corp.example.net\n")
    run_init(ws, capsys)
    assert "corp" in (Path(env_file(ws)["ISOFEAT_PROXY_CONF"]) / "filter").read_text()


def test_two_worktrees_get_different_ids_and_the_main_git_folder(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_repo = project(tmp_path / "repo")
    git("add", ".devcontainer", cwd=main_repo)
    git("commit", "-qm", "dc", cwd=main_repo)
    wt = tmp_path / "repo-task"
    git("worktree", "add", "-q", "-b", "task/x", str(wt), cwd=main_repo)
    a, b = run_init(main_repo, capsys), run_init(wt, capsys)
    assert a["env_id"] != b["env_id"] and a["project"] != b["project"]
    assert b["worktree"] is True
    env = env_file(wt)
    common = (main_repo / ".git").resolve()
    # The worktree's .git file is covered by a read-only pointer to the agent's own git; of the
    # main repository only the objects are mounted (read-only), never its refs or records.
    assert env["ISOFEAT_GIT_OBJECTS"] == str(common / "objects")
    assert env["ISOFEAT_GIT_POINTER_TARGET"] == "/workspace/.git"
    assert Path(env["ISOFEAT_GIT_POINTER"]).read_text() == "gitdir: /run/isofeat/git\n"
    assert env["ISOFEAT_GIT_DIR_TARGET"] == "/run/isofeat/git"
    assert str(common) not in env["ISOFEAT_GIT_DIR"]


def test_no_devcontainer_folder_is_exit_2(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path)]) == 2
    assert "isofeat scaffold" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('{"dockerInDocker": tru}', "isofeat.json:1: not valid JSON"),
        ('{"dockerInDocker": "yes"}', "must be true or false"),
        ('{"upstream": "ftp://x:1"}', "unsupported scheme"),
        ('{"surprise": 1}', "unknown setting"),
    ],
)
def test_bad_settings_stop_with_exit_2_and_write_no_env(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, message: str
) -> None:
    ws = project(tmp_path / "p")
    (ws / ".devcontainer" / "isofeat.json").write_text(settings)
    assert main(["init", str(ws)]) == 2
    assert message in capsys.readouterr().err
    assert not (ws / ".devcontainer" / ".env").exists()


def test_a_bad_whitelist_line_stops_init_and_keeps_the_old_render(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = project(tmp_path / "p")
    run_init(ws, capsys)
    filt = Path(env_file(ws)["ISOFEAT_PROXY_CONF"]) / "filter"
    before = filt.read_text()
    (ws / ".devcontainer" / "whitelist.txt").write_text("ok.example.org\n*\n")
    assert main(["init", str(ws)]) == 2
    assert "whitelist.txt:2:" in capsys.readouterr().err
    assert filt.read_text() == before  # never widened, never half-written


def test_upstream_from_settings_reaches_the_render(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = project(tmp_path / "p")
    (ws / ".devcontainer" / "isofeat.json").write_text(
        json.dumps({"upstream": "socks5://corp.example.net:1080", "noUpstream": ["git.corp"]})
    )
    run_init(ws, capsys)
    conf = (Path(env_file(ws)["ISOFEAT_PROXY_CONF"]) / "tinyproxy.conf").read_text()
    assert "Upstream socks5 corp.example.net:1080" in conf
    assert 'Upstream none "git.corp"' in conf


def test_env_ids_are_stable_across_processes(home: Path, tmp_path: Path) -> None:
    ws = project(tmp_path / "p")
    ids = {
        subprocess.run(
            [sys.executable, "-c", "import sys; from isofeat.layout import env_id_for; "
             "from pathlib import Path; print(env_id_for(Path(sys.argv[1])))", str(ws)],
            capture_output=True, text=True, check=True, env=dict(os.environ),
        ).stdout
        for _ in range(2)
    }
    assert len(ids) == 1


def test_init_shares_the_worktree_with_the_sandbox_group_once(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = project(tmp_path / "p")
    (ws / "sub").mkdir()
    (ws / "sub" / "f.txt").write_text("x")
    os.chmod(ws / "sub" / "f.txt", 0o644)
    (ws / "link").symlink_to("/etc/hostname")
    git_before = {p: p.stat() for p in (ws / ".git", *(ws / ".git").rglob("*"))}
    first = run_init(ws, capsys)
    for path in (ws, ws / "sub", ws / "sub" / "f.txt"):
        st = path.stat()
        assert st.st_gid == 2000, path
        assert st.st_mode & 0o020, path  # group write
    # The user's .git is not shared: the sandbox never gets it (it has a git of its own).
    for path, st in git_before.items():
        assert (path.stat().st_gid, path.stat().st_mode) == (st.st_gid, st.st_mode), path
    assert (ws / "sub").stat().st_mode & 0o2000  # setgid: new files keep the group
    assert (ws / "sub" / "f.txt").stat().st_mode & 0o777 == 0o664  # no execute, no world
    assert str(first["workspace_sharing"]).startswith("shared")
    assert Path("/etc/hostname").stat().st_gid != 2000  # links are not followed
    assert run_init(ws, capsys)["workspace_sharing"] == "already shared"

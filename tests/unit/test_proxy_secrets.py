"""Upstream proxy credentials live in 0600 files inside 0700 folders, owned by the proxy's uid.

``isofeat init`` renders both proxies' configs; with ``socks5://user:pass@...`` in
isofeat.json the conf holds the password. The proxy reads the folder through a bind mount,
so it runs as the folder's owner (``ISOFEAT_PROXY_USER``): 2888 when init runs as root,
else the host user.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from isofeat import init as isofeat_init
from isofeat.cli import main
from isofeat.layout import SANDBOX_GID, SANDBOX_UID

SECRET = "s3cret-pw"  # noqa: S105 (a test value, to find it in files)
UPSTREAM = f"socks5://corp-user:{SECRET}@proxy.corp.test:1080"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


@pytest.fixture
def workspace(tmp_path: Path, isolated_home: Path) -> Path:
    ws = tmp_path / "proj"
    (ws / ".devcontainer").mkdir(parents=True)
    (ws / ".devcontainer" / "isofeat.json").write_text(json.dumps({"upstream": UPSTREAM}))
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    return ws


def run_init(ws: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["init", str(ws), "--json", "--no-share"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def env_file(ws: Path) -> dict[str, str]:
    lines = (ws / ".devcontainer" / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_init_keeps_the_credentials_private_to_the_proxy_user(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_init(workspace, capsys)
    state = Path(str(result["state_dir"]))
    want = isofeat_init.proxy_owner()
    assert mode(state) == 0o700
    for name in ("proxy", "dind-proxy"):
        folder = state / name
        assert SECRET in (folder / "tinyproxy.conf").read_text()
        assert mode(folder) == 0o700
        assert owner(folder) == want
        for file in ("tinyproxy.conf", "filter", ".render-key"):
            assert mode(folder / file) == 0o600, file
            assert owner(folder / file) == want, file
    assert env_file(workspace)["ISOFEAT_PROXY_USER"] == "{}:{}".format(*want)
    # The credentials are nowhere in the workspace, where the agent could read them.
    assert SECRET not in (workspace / ".devcontainer" / ".env").read_text()


def test_root_hands_the_render_to_an_unprivileged_uid_others_keep_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert isofeat_init.proxy_owner() == (isofeat_init.PROXY_UID, isofeat_init.PROXY_GID)
    assert isofeat_init.PROXY_UID not in (0, 1000, SANDBOX_UID, SANDBOX_GID)
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    monkeypatch.setattr(os, "getgid", lambda: 1234)
    assert isofeat_init.proxy_owner() == (1234, 1234)


def test_rootless_docker_runs_the_proxy_as_container_root_which_is_the_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    monkeypatch.setattr(os, "getgid", lambda: 1234)
    rootless = {"DOCKER_HOST": "unix:///run/user/1234/docker.sock"}
    assert isofeat_init.proxy_container_user(rootless) == "0:0"
    assert isofeat_init.proxy_container_user({}) == "1234:1234"


def test_a_render_left_world_readable_is_tightened_on_the_next_open(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older isofeat wrote 0755/0644; the cached render is kept, but not its modes."""
    state = Path(str(run_init(workspace, capsys)["state_dir"]))
    conf = state / "proxy" / "tinyproxy.conf"
    before = conf.stat().st_mtime_ns
    state.chmod(0o755)
    (state / "proxy").chmod(0o755)
    conf.chmod(0o644)
    result = run_init(workspace, capsys)
    assert result["changed"] is False
    assert conf.stat().st_mtime_ns == before  # not rendered again
    assert (mode(state), mode(state / "proxy"), mode(conf)) == (0o700, 0o700, 0o600)


def test_proxy_render_with_credentials_is_private_to_whoever_runs_it(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["proxy", "render", "--out", str(out), "--upstream", UPSTREAM, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["proxy_user"] == f"{os.getuid()}:{os.getgid()}"
    assert mode(out) == 0o700
    assert mode(out / "tinyproxy.conf") == mode(out / "filter") == 0o600
    assert owner(out / "tinyproxy.conf") == (os.getuid(), os.getgid())


def test_proxy_render_says_who_must_run_the_proxy(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["proxy", "render", "--out", str(tmp_path / "o"), "--upstream", UPSTREAM]) == 0
    err = capsys.readouterr().err
    assert "holds upstream credentials" in err
    assert f"--user {os.getuid()}:{os.getgid()}" in err


def test_proxy_render_without_credentials_stays_readable_by_the_image_user(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["proxy", "render", "--out", str(out), "--upstream", "socks5://h.test:1"]) == 0
    assert mode(out / "tinyproxy.conf") == mode(out / "filter") == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
def test_proxy_render_owner_gives_the_files_to_the_proxy_uid(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["proxy", "render", "--out", str(out), "--upstream", UPSTREAM, "--owner", "2888"]
    assert main(argv) == 0
    for path in (out, out / "tinyproxy.conf", out / "filter"):
        assert owner(path) == (2888, 2888)
    assert mode(out) == 0o700 and mode(out / "tinyproxy.conf") == 0o600


@pytest.mark.skipif(os.geteuid() == 0, reason="root may give files to any uid")
def test_proxy_render_owner_without_root_is_exit_2(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["proxy", "render", "--out", str(tmp_path / "o"), "--owner", "2888:2888"]
    assert main(argv) == 2
    assert "fix:" in capsys.readouterr().err

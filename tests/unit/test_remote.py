"""``--on HOST`` (isofeat.remote) without a second machine: argument validation, the ssh and
git command lines, Docker contexts, the missing-tools report and forwarded notifications.

Where a remote is needed, a stand-in ``ssh`` on the PATH runs the remote script with a local
shell: what is tested is what isofeat sends and how it reads the answer. The real remote
(sshd, a second engine) is tests/docker/test_remote.py.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from isofeat import remote
from isofeat.cli import main
from isofeat.errors import IsofeatError
from isofeat.notify.backends import RECOVERED_MARK

BAD_HOSTS = [
    "-oProxyCommand=x",  # option injection: ssh would run x on this machine
    "-p2222",
    "a b",
    "host;rm",
    "host|id",
    "$(id)",
    "`id`",
    "user@-oProxyCommand=x",
    "user@host@other",
    "host/../etc",
    "ssh://host:99999",
    "ssh://-oProxyCommand=x",
    "",
    "a\nb",
    "\x1b[31mred",
    "host:22",  # scp syntax is not a destination; ssh://host:22 is
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_bad_host_exits_2_with_a_fix_before_anything_runs(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], security_report: Any,
) -> None:
    # No ssh and no docker reachable: validation must not need either.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code = main(["task", "new", "t1", f"--on={host}"])
    err = capsys.readouterr().err
    ok = code == 2 and "fix:" in err and "\x1b" not in err
    security_report.bad_input(f"task-new-on-{host[:20]!r}", f"task new t1 --on {host!r}",
                              expected="exit 2 with a fix, nothing run",
                              observed=f"exit {code}", ok=ok)
    assert ok, err
    if host.startswith("-"):
        assert "option" in err


def test_notify_watch_on_refuses_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notify", "watch", "--on", "-oProxyCommand=touch /tmp/x"]) == 2
    assert "fix:" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "destination", "port"), [
    ("user@host", "user@host", None),
    ("build-box", "build-box", None),
    ("u@10.0.0.5", "u@10.0.0.5", None),
    ("ssh://u@h.example:2222", "u@h.example", 2222),
    ("ssh://h.example/", "h.example", None),
])
def test_good_hosts(value: str, destination: str, port: int | None) -> None:
    parsed = remote.validate_host(value)
    assert (parsed.destination, parsed.port) == (destination, port)


def test_ssh_command_line_ends_options_and_checks_host_keys() -> None:
    r = remote.validate_host("ssh://u@h:2222")
    argv = r.command("true", {remote.ISOFEAT_SSH_CONFIG: "/cfg"})
    assert argv[argv.index("--") + 1] == "u@h"
    assert argv[-1] == f"{remote.REMOTE_PATH}; true"  # ~/.local/bin: pipx, --install
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert argv[argv.index("-F") + 1] == "/cfg" and argv[argv.index("-p") + 1] == "2222"
    # git gets the port from the URL, and the same options through core.sshCommand.
    assert r.git_url("a/repo") == "ssh://u@h:2222/~/a/repo"
    assert "-p" not in shlex.split(r.git_ssh_command({}))


def _docker_context(tmp_path: Path, name: str, host: str) -> dict[str, str]:
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker")}
    subprocess.run(["docker", "context", "create", name, "--docker", f"host={host}"],
                   env=env, check=True, capture_output=True)
    return env


def test_docker_context_with_ssh_endpoint_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if subprocess.run(["docker", "context", "--help"], capture_output=True).returncode:
        pytest.skip("this docker client has no contexts")
    env = _docker_context(tmp_path, "farbox", "ssh://dev@far.example:2200")
    monkeypatch.setenv("DOCKER_CONFIG", env["DOCKER_CONFIG"])
    r = remote.resolve_host("farbox")
    assert (r.label, r.destination, r.port) == ("farbox", "dev@far.example", 2200)


def test_docker_context_without_ssh_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if subprocess.run(["docker", "context", "--help"], capture_output=True).returncode:
        pytest.skip("this docker client has no contexts")
    env = _docker_context(tmp_path, "tcpbox", "tcp://10.0.0.9:2375")
    monkeypatch.setenv("DOCKER_CONFIG", env["DOCKER_CONFIG"])
    with pytest.raises(IsofeatError) as err:
        remote.resolve_host("tcpbox")
    assert err.value.code == 2 and "not ssh://" in str(err.value)


# --- a stand-in ssh: runs the remote script here, with the PATH the test gives it ----------

def fake_ssh(folder: Path, remote_path: str, log: Path) -> Path:
    """An ``ssh`` that records its argv and runs the script after ``-- DEST`` with ``sh``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ssh"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\n"
        'while [ "$1" != "--" ]; do shift; done\n'
        "shift 2\n"
        f"PATH={shlex.quote(remote_path)} exec /bin/sh -c \"$1\"\n",
        encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def tool(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)


def test_missing_tools_are_all_named_with_their_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    there = tmp_path / "remote-bin"
    tool(there, "git", "exit 0")
    tool(there, "docker", "exit 1")  # installed, but no engine answers
    tool(there, "isofeat", "echo 'isofeat 0.0.1'")  # another version
    for name in ("sh", "printf"):
        os.symlink(f"/bin/{name}" if os.path.exists(f"/bin/{name}") else f"/usr/bin/{name}",
                   there / name)
    log = tmp_path / "ssh.log"
    here = fake_ssh(tmp_path / "bin", str(there), log)
    monkeypatch.setenv("PATH", f"{here}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(IsofeatError) as err:
        remote.check_remote(remote.validate_host("box"))
    text = str(err.value)
    for piece in ("engine:", "compose:", "devcontainer:", "npm install -g @devcontainers/cli",
                  "isofeat: box has 0.0.1"):
        assert piece in text, text
    assert "git:" not in text
    assert err.value.code == 1


HOSTILE = [
    # a well-formed one, whose text carries escapes and a forged second line
    {"env": "repo-t1-0123456789", "urgency": "blocked", "title": "\x1b]0;owned\x07T",
     "message": "needs input\n12:00:00 [other] ERROR: fake", "id": "x", "created": "now"},
    {"env": "../../etc", "urgency": "info", "message": "bad label"},
    {"env": "ok-env", "urgency": "panic", "message": "bad urgency"},
    "not an object",
]


def test_notify_watch_on_checks_every_forwarded_line_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [json.dumps(item) for item in HOSTILE] + ["{" + "x" * 20000, "not json"]
    payload = tmp_path / "lines"
    payload.write_text("\n".join(lines) + "\n", encoding="utf-8")
    there = tmp_path / "remote-bin"
    tool(there, "isofeat", f"exec /bin/cat {shlex.quote(str(payload))}")
    log = tmp_path / "ssh.log"
    here = fake_ssh(tmp_path / "bin", str(there), log)
    monkeypatch.setenv("PATH", f"{here}{os.pathsep}{os.environ['PATH']}")
    assert main(["notify", "watch", "--on", "u@box", "--once", "--backend", "stdout",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(shown) == 1, out
    assert shown[0]["env"] == "repo-t1-0123456789" and shown[0]["on"] == "u@box"
    assert "\x1b" not in out and "\x07" not in out
    assert "\n" not in shown[0]["message"]
    assert err.count("dropped") == 5, err
    assert "--once" in log.read_text(encoding="utf-8")


def test_notify_watch_on_passes_on_only_a_true_recovered_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # The remote watcher marks a journal re-show (it may be a repeat); the mark is passed on,
    # and anything but JSON true reads as not marked.
    base = {"env": "repo-t1-0123456789", "urgency": "info", "id": "x", "created": "now"}
    items = [{**base, "message": "again", "recovered": True},
             {**base, "message": "fresh", "recovered": "yes"}]
    payload = tmp_path / "lines"
    payload.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    there = tmp_path / "remote-bin"
    tool(there, "isofeat", f"exec /bin/cat {shlex.quote(str(payload))}")
    here = fake_ssh(tmp_path / "bin", str(there), tmp_path / "ssh.log")
    monkeypatch.setenv("PATH", f"{here}{os.pathsep}{os.environ['PATH']}")
    argv = ["notify", "watch", "--on", "u@box", "--once", "--backend", "stdout"]
    assert main([*argv, "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(item["message"], item["recovered"]) for item in shown] == [
        ("again", True), ("fresh", False)]
    assert main(argv) == 0
    again, fresh = capsys.readouterr().out.splitlines()
    assert again.endswith(f"again{RECOVERED_MARK}") and fresh.endswith("fresh"), (again, fresh)


def _repo_with_record(tmp_path: Path, destination: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "base"], check=True)
    base = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    remote._write_record(repo, {
        "name": "t1", "remote": remote.validate_host(destination).to_json(),
        "repo": ".local/share/isofeat/remote/x/repo", "base": base, "path": "/h/x/repo-t1",
    }, os.environ)
    return repo


def test_an_unreachable_remote_is_shown_and_its_task_kept(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = _repo_with_record(tmp_path, "u@gone")
    bin_dir = tmp_path / "bin"
    tool(bin_dir, "ssh", "echo 'ssh: connect to host gone port 22: Connection refused' >&2; "
                         "exit 255")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(repo)
    assert main(["task", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    (item,) = json.loads(out)
    assert (item["name"], item["where"], item["reachable"], item["running"]) == (
        "t1", "u@gone", False, False)
    assert "Connection refused" in err
    # Without --force nothing is removed when the remote cannot say what would be lost.
    assert main(["task", "rm", "t1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert remote.read_record(repo, "t1") is not None
    # merge says the remote cannot be reached (exit 1: not bad input).
    assert main(["task", "merge", "t1"]) == 1
    assert "cannot reach u@gone" in capsys.readouterr().err


def test_a_silent_ssh_255_says_what_it_can_mean(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """OpenSSH exits 255, printing nothing at LogLevel ERROR, when the connection closes early
    and when the remote command ends on a signal: the error must not claim only the first."""
    repo = _repo_with_record(tmp_path, "u@box")
    bin_dir = tmp_path / "bin"
    tool(bin_dir, "ssh", "exit 255")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(repo)
    assert main(["task", "merge", "t1"]) == 1
    assert remote.SILENT_255 in capsys.readouterr().err

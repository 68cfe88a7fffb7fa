"""run-claude / isofeat run: refuse outside a sandbox and while the self-test fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from isofeat.cli import main


def test_refuses_outside_a_sandbox(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ISOFEAT_SANDBOX", raising=False)
    assert main(["run", "claude", "--version"]) == 1
    err = capsys.readouterr().err
    assert "refusing to start claude" in err and "outside an isofeat sandbox" in err


def test_run_claude_console_script_refuses_on_a_bare_host(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ISOFEAT_SANDBOX"}
    script = Path(sys.executable).parent / "run-claude"
    argv = [str(script)] if script.exists() else [
        sys.executable, "-c", "from isofeat.agents import run_claude_main; "
        "raise SystemExit(run_claude_main())"]
    done = subprocess.run([*argv, "--version"], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 1
    assert "refusing" in done.stderr


@pytest.mark.skipif(os.getuid() == 1001, reason="runs the real self-test; must fail here")
def test_refuses_when_the_self_test_fails_and_names_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A host that claims to be a sandbox: the real checks run and fail (wrong uid, no proxy).
    monkeypatch.setenv("ISOFEAT_SANDBOX", "1")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert main(["run", "codex"]) == 1
    err = capsys.readouterr().err
    assert "sandbox self-test failed" in err
    assert "user:" in err and "proxy-env:" in err


def test_unknown_agent_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "cursor"]) == 2


def test_stop_on_failure_never_signals_an_init_that_is_not_the_sandbox_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real stop is tested in a real container (tests/docker/test_main_job.py). Here: the
    # guards that keep `isofeat doctor --stop-on-failure` from signalling a host's init.
    from isofeat import doctor

    signalled: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signalled.append(pid))
    (tmp_path / "1").mkdir()
    assert "not an isofeat sandbox" in doctor.stop_sandbox({}, proc=tmp_path)
    if os.getuid() == 0:
        # Root never signals PID 1, even inside something that says it is a sandbox.
        assert "could not stop" in doctor.stop_sandbox({"ISOFEAT_SANDBOX": "1"}, proc=tmp_path)
    else:
        assert "stopping this container" in doctor.stop_sandbox(
            {"ISOFEAT_SANDBOX": "1"}, proc=tmp_path
        )
    assert signalled == ([] if os.getuid() == 0 else [1])

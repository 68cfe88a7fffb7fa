"""`isofeat notify watch`: labels from folders, removal after display, backends, live watching."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from isofeat.cli import main
from isofeat.notify import ensure_env_notify_dir
from isofeat.notify.backends import NOTIFY_SEND_URGENCY, Display, Shown
from isofeat.notify.message import Notification
from isofeat.notify.watch import RateLimiter


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    ensure_env_notify_dir("env-a")
    ensure_env_notify_dir("env-b")
    return tmp_path / "state" / "isofeat" / "notify"


def put(folder: Path, *, stamp: int | None = None, **fields: object) -> Path:
    """Drop a notification file the way `send` names it."""
    doc: dict[str, object] = {
        "v": 1,
        "id": secrets.token_hex(16),
        "urgency": "info",
        "message": "hello",
        "created": "2025-01-01T00:00:00Z",
    }
    doc.update(fields)
    path = folder / f"{stamp if stamp is not None else time.time_ns()}-{doc['id']}.json"
    path.write_text(json.dumps(doc))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_once_shows_in_order_labels_by_folder_and_removes(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(root / "env-b", stamp=3, message="third", urgency="error")
    put(root / "env-a", stamp=2, message="second", title="T")
    put(root / "env-a", stamp=1, message="first", urgency="clarification")
    rc, out, err = run(capsys, "notify", "watch", "--once", "--backend", "stdout")
    assert rc == 0 and err == ""
    lines = [line.split(" ", 1)[1] for line in out.splitlines()]  # drop the clock
    assert lines == [
        "[env-a] CLARIFICATION first",
        "[env-a] INFO T: second",
        "[env-b] ERROR third",
    ]
    assert list((root / "env-a").iterdir()) == [] and list((root / "env-b").iterdir()) == []


def test_once_json_output(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(root / "env-b", message="done", urgency="complete", title="Build", source="codex")
    rc, out, _ = run(capsys, "notify", "watch", "--once", "--backend", "stdout", "--json")
    assert rc == 0
    [line] = out.splitlines()  # JSON only: no extra human line on stdout
    record = json.loads(line)
    assert record["env"] == "env-b"
    assert (record["urgency"], record["title"], record["message"], record["source"]) == (
        "complete",
        "Build",
        "done",
        "codex",
    )
    assert "received" in record and record["created"] == "2025-01-01T00:00:00Z"
    assert record["recovered"] is False  # only a restarted watcher's journal re-show is


def test_root_option_and_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "elsewhere"
    (other / "env-x").mkdir(parents=True)
    put(other / "env-x", message="via --root")
    rc, out, _ = run(
        capsys, "notify", "watch", "--once", "--backend", "stdout", "--root", str(other)
    )
    assert rc == 0 and "[env-x] INFO via --root" in out
    rc, out, err = run(capsys, "notify", "watch", "--once", "--root", str(tmp_path / "none"))
    assert (rc, out, err) == (0, "", "")
    assert not (tmp_path / "none").exists()  # --once does not create folders


def test_temporary_files_are_left_for_the_sender(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = root / "env-a" / ".1-abc.json.tmp"
    partial.write_text('{"v": 1, "mess')
    rc, out, err = run(capsys, "notify", "watch", "--once", "--backend", "stdout")
    assert (rc, out, err) == (0, "", "")
    assert partial.exists()


# --- desktop backends, with stand-in tools that record their argv ------------------------------
def fake_tool(bin_dir: Path, name: str, exit_code: int = 0) -> Path:
    """A stand-in for notify-send/osascript (neither exists on this CI host): records argv."""
    log = bin_dir / f"{name}.argv"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> '{log}'\nprintf '\\n' >> '{log}'\nexit {exit_code}\n"
    )
    script.chmod(0o755)
    return log


def calls(log: Path) -> list[list[str]]:
    return [entry.split("\0") for entry in log.read_text().split("\0\n") if entry]


def test_notify_send_backend_maps_urgency_and_passes_data_after_dashdash(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = fake_tool(tmp_path / "bin", "notify-send")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    for stamp, urgency in enumerate(NOTIFY_SEND_URGENCY):
        put(root / "env-a", stamp=stamp, urgency=urgency, message=f"-{urgency} <b>x</b> & y")
    rc, out, err = run(capsys, "notify", "watch", "--once", "--backend", "desktop")
    assert rc == 0 and out == "" and err == ""
    recorded = calls(log)
    assert [argv[:5] for argv in recorded] == [
        ["-u", level, "-a", "isofeat", "--"] for level in NOTIFY_SEND_URGENCY.values()
    ]
    assert [level for level in NOTIFY_SEND_URGENCY.values()] == [
        "low",
        "normal",
        "critical",
        "critical",
        "critical",
    ]
    first = recorded[0]
    assert first[5] == "[env-a] info"
    # Body markup is escaped: no clickable links or images from a sandbox.
    assert first[6] == "-info &lt;b&gt;x&lt;/b&gt; &amp; y"
    assert list((root / "env-a").iterdir()) == []


def test_desktop_failure_falls_back_to_stdout(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = fake_tool(tmp_path / "bin", "notify-send", exit_code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    put(root / "env-a", stamp=1, message="one")
    put(root / "env-a", stamp=2, message="two")
    rc, out, err = run(capsys, "notify", "watch", "--once")
    assert rc == 0
    assert err.count("notify-send failed (exit code 1)") == 1
    assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
        "[env-a] INFO one",
        "[env-a] INFO two",
    ]
    assert len(calls(log)) == 1  # tried once, then stdout for good


def test_desktop_tool_missing_means_stdout(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    put(root / "env-a", message="plain")
    rc, out, err = run(capsys, "notify", "watch", "--once", "--backend", "desktop")
    assert rc == 0 and "not on PATH" in err and "[env-a] INFO plain" in out
    put(root / "env-a", message="auto")
    rc, out, err = run(capsys, "notify", "watch", "--once")  # auto: silent fallback
    assert rc == 0 and err == "" and "[env-a] INFO auto" in out


def test_osascript_gets_a_constant_script_and_text_as_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fake_tool(tmp_path / "bin", "osascript")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    display = Display("desktop", platform="darwin")
    assert display.name == "osascript"
    hostile = 'x" & (do shell script "touch /tmp/pwned") & "'
    display.show(
        Shown("env-a", Notification(urgency="blocked", message=hostile, title="-e")), "00:00:00"
    )
    [argv] = calls(log)
    assert argv[:6] == [
        "-e",
        "on run argv",
        "-e",
        "display notification (item 3 of argv) with title (item 1 of argv)"
        " subtitle (item 2 of argv)",
        "-e",
        "end run",
    ]
    # The first positional starts with "[": nothing after it can be taken as an option.
    assert argv[6:] == ["[env-a] -e", "blocked", hostile]


# --- rate limit -------------------------------------------------------------------------------
def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(12)] == [True] * 10 + [False] * 2
    assert limiter.allow("b")  # per environment
    now[0] = 5.9
    assert not limiter.allow("a")
    now[0] = 6.1  # one token per 6 seconds
    assert limiter.allow("a") and not limiter.allow("a")
    assert list(limiter.summaries()) == [("a", 4)]
    assert list(limiter.summaries()) == []  # one summary line, then quiet
    assert not limiter.allow("a")
    assert list(limiter.summaries()) == []  # within the interval: still quiet
    assert list(limiter.summaries(force=True)) == [("a", 1)]


# --- continuous watching ----------------------------------------------------------------------
def test_watch_picks_up_files_written_after_it_starts(root: Path, tmp_path: Path) -> None:
    env = os.environ.copy()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "isofeat",
            "notify",
            "watch",
            "--backend",
            "stdout",
            "--root",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        for line in proc.stdout or []:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()

    def next_line(timeout: float) -> str:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"no notification within {timeout}s; stderr: {proc.communicate()[1]}")

    try:
        # The first one proves the watcher runs (it may be found by the initial scan).
        put(root / "env-a", message="first")
        assert "[env-a] INFO first" in next_line(20)
        started = time.monotonic()
        put(root / "env-a", message="second")
        assert "[env-a] INFO second" in next_line(20)
        # Well under the 10 s periodic rescan: the filesystem event woke the watcher.
        assert time.monotonic() - started < 5
        # An environment created after start is watched too.
        ensure_env_notify_dir("env-new")
        time.sleep(0.5)
        put(root / "env-new", message="late")
        assert "[env-new] INFO late" in next_line(20)
        assert list((root / "env-a").iterdir()) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0  # SIGTERM stops it cleanly

"""`isofeat notify send`: one atomic JSON file per notification, and the agent-hook mappings."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from isofeat.cli import main
from isofeat.errors import IsofeatError
from isofeat.notify import (
    FILE_NAME_RE,
    count_pending,
    ensure_env_notify_dir,
    env_notify_dir,
    remove_env_notify_dir,
)
from isofeat.notify.message import MAX_MESSAGE_CHARS, MAX_TITLE_CHARS, validate


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("ISOFEAT_NOTIFY_SOURCE", raising=False)
    return tmp_path


@pytest.fixture
def box(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder a sandbox writes into: the env folder, as the container sees it."""
    folder = ensure_env_notify_dir("env-a")
    monkeypatch.setenv("ISOFEAT_NOTIFY_DIR", str(folder))
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def only_file(folder: Path) -> Path:
    files = sorted(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


def test_send_writes_one_valid_file(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys,
        "notify",
        "send",
        "--urgency",
        "blocked",
        "--title",
        "Tests",
        "need a decision on the schema",
    )
    assert rc == 0, err
    path = only_file(box)  # no temporary file is left behind
    assert FILE_NAME_RE.fullmatch(path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the host user must be able to read it
    doc = json.loads(path.read_bytes())
    assert doc["v"] == 1
    assert doc["urgency"] == "blocked"
    assert doc["title"] == "Tests"
    assert doc["message"] == "need a decision on the schema"
    assert len(doc["id"]) == 32 and doc["id"] in path.name and doc["id"] in out
    assert doc["created"].endswith("Z")
    # What send writes is exactly what watch accepts.
    assert validate(path.read_bytes()).message == "need a decision on the schema"


def test_send_json_output_and_source(
    box: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ISOFEAT_NOTIFY_SOURCE", "claude")
    rc, out, _ = run(capsys, "notify", "send", "--urgency", "info", "--json", "hello")
    assert rc == 0
    reply = json.loads(out)
    assert Path(reply["path"]).parent == box
    assert json.loads(Path(reply["path"]).read_text())["source"] == "claude"


def test_send_without_folder_exits_2_and_says_how_to_fix(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = home / "nowhere"
    monkeypatch.setenv("ISOFEAT_NOTIFY_DIR", str(missing))
    rc, _, err = run(capsys, "notify", "send", "--urgency", "info", "hello")
    assert rc == 2
    assert "does not exist" in err and "ISOFEAT_NOTIFY_DIR" in err
    assert not missing.exists()  # send never creates the mount point


def test_send_requires_urgency_and_visible_message(
    box: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "notify", "send", "hello")
    assert rc == 2 and "--urgency" in err
    rc, _, err = run(capsys, "notify", "send", "--urgency", "info", "\x1b[31m\x00\x07 \n")
    assert rc == 2 and "empty" in err
    assert main(["notify", "send", "--urgency", "urgent", "hello"]) == 2  # argparse: bad choice
    assert list(box.iterdir()) == []


def test_send_truncates_and_says_so(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(
        capsys, "notify", "send", "--urgency", "info", "--title", "t" * 500, "m" * 5000
    )
    assert rc == 0
    assert "message truncated to 2000" in err and "title truncated to 200" in err
    doc = json.loads(only_file(box).read_text())
    assert len(doc["message"]) == MAX_MESSAGE_CHARS and doc["message"].endswith("\u2026")
    assert len(doc["title"]) == MAX_TITLE_CHARS
    assert doc["truncated"] is True


def test_send_strips_escapes_and_controls(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, _ = run(
        capsys, "notify", "send", "--urgency", "info", "a\x1b[2Jb\x1b]0;title\x07c\u202ed\x00e\nf"
    )
    assert rc == 0
    assert json.loads(only_file(box).read_text())["message"] == "abcde f"


# --- Claude Code hooks: JSON on stdin -------------------------------------------------------
def claude(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    payload: object,
    *extra: str,
) -> tuple[int, str, str]:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    return run(capsys, "notify", "send", "--from-hook", "claude", *extra)


BASE = {"session_id": "s1", "transcript_path": "/home/claude/.claude/t.jsonl", "cwd": "/w"}


@pytest.mark.parametrize(
    ("extra", "urgency"),
    [
        ({"notification_type": "permission_prompt"}, "blocked"),
        ({"notification_type": "idle_prompt"}, "clarification"),
        ({}, "clarification"),
    ],
)
def test_claude_notification_hook(
    box: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, str],
    urgency: str,
) -> None:
    payload = {
        **BASE,
        "hook_event_name": "Notification",
        "message": "Claude needs your permission to use Bash",
        **extra,
    }
    rc, out, err = claude(capsys, monkeypatch, payload)
    assert rc == 0, err
    assert out == ""  # hooks stay quiet on success
    doc = json.loads(only_file(box).read_text())
    assert doc["urgency"] == urgency
    assert doc["message"] == "Claude needs your permission to use Bash"
    assert doc["source"] == "claude"


def test_claude_stop_hook(
    box: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, _ = claude(
        capsys, monkeypatch, {**BASE, "hook_event_name": "Stop", "stop_hook_active": False}
    )
    assert rc == 0
    doc = json.loads(only_file(box).read_text())
    assert doc["urgency"] == "complete" and doc["title"] == "Claude Code finished"
    only_file(box).unlink()
    rc, _, _ = claude(
        capsys,
        monkeypatch,
        {**BASE, "hook_event_name": "Stop", "last_assistant_message": "All 12 tests pass."},
    )
    assert rc == 0
    assert json.loads(only_file(box).read_text())["message"] == "All 12 tests pass."


def test_claude_hook_options_override_mapping(
    box: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, _ = claude(
        capsys,
        monkeypatch,
        {**BASE, "hook_event_name": "Stop"},
        "--urgency",
        "error",
        "--title",
        "custom",
    )
    assert rc == 0
    doc = json.loads(only_file(box).read_text())
    assert (doc["urgency"], doc["title"]) == ("error", "custom")


def test_claude_hook_other_event_is_ignored(
    box: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, err = claude(capsys, monkeypatch, {**BASE, "hook_event_name": "PreToolUse"})
    assert rc == 0 and "ignored" in err
    assert list(box.iterdir()) == []


def test_hook_failures_exit_1_never_2(
    box: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exit 2 from a Claude Code Stop hook means "keep going" and feeds stderr to the model.
    rc, _, err = claude(capsys, monkeypatch, "{not json")
    assert rc == 1 and "not valid JSON" in err
    rc, _, _ = claude(capsys, monkeypatch, "[1, 2]")
    assert rc == 1
    monkeypatch.setenv("ISOFEAT_NOTIFY_DIR", str(box / "missing"))
    rc, _, err = claude(capsys, monkeypatch, {**BASE, "hook_event_name": "Stop"})
    assert rc == 1 and "does not exist" in err


def test_claude_hook_refuses_a_terminal_on_stdin(
    box: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, terminal = os.openpty()
    with open(terminal, encoding="utf-8") as tty:
        monkeypatch.setattr(sys, "stdin", tty)
        rc, _, err = run(capsys, "notify", "send", "--from-hook", "claude")
    os.close(controller)
    assert rc == 1 and "terminal" in err
    assert list(box.iterdir()) == []


# --- Codex: JSON as the last argument ---------------------------------------------------------
def test_codex_notify_payload(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = json.dumps(
        {
            "type": "agent-turn-complete",
            "thread-id": "b5f6",
            "turn-id": "12345",
            "cwd": "/w",
            "input-messages": ["Rename foo to bar"],
            "last-assistant-message": "Rename complete; cargo build succeeds.",
        }
    )
    rc, out, err = run(capsys, "notify", "send", "--from-hook", "codex", payload)
    assert rc == 0, err
    assert out == ""
    doc = json.loads(only_file(box).read_text())
    assert doc["urgency"] == "complete"
    assert doc["message"] == "Rename complete; cargo build succeeds."
    assert doc["source"] == "codex"


def test_codex_without_payload_or_bad_payload_exits_1(
    box: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "notify", "send", "--from-hook", "codex")
    assert rc == 1 and "last argument" in err
    rc, _, _ = run(capsys, "notify", "send", "--from-hook", "codex", "{oops")
    assert rc == 1
    rc, _, _ = run(capsys, "notify", "send", "--from-hook", "codex", '{"type": "other"}')
    assert rc == 0
    assert list(box.iterdir()) == []


# --- the round trip, on one machine -----------------------------------------------------------
def test_send_then_watch_once_round_trip(
    box: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(capsys, "notify", "send", "--urgency", "complete", "--title", "Build", "all green")[0]
        == 0
    )
    assert run(capsys, "notify", "send", "--urgency", "error", "then red")[0] == 0
    assert count_pending("env-a") == 2
    rc, out, err = run(capsys, "notify", "watch", "--once", "--backend", "stdout")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("[env-a] COMPLETE Build: all green")
    assert lines[1].endswith("[env-a] ERROR then red")
    assert list(box.iterdir()) == []  # shown means removed
    assert count_pending("env-a") == 0


def test_send_path_does_not_import_jsonschema_or_watchdog(box: Path) -> None:
    # `send` runs in every agent hook; the heavy validators belong to the host side only.
    code = (
        "import sys; from isofeat.cli import main; rc = main(['notify', 'send', '--urgency', "
        "'info', 'x']); heavy = [m for m in ('jsonschema', 'watchdog') if m in sys.modules]; "
        "print(heavy); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- folder helpers for `isofeat init` and `isofeat task` -------------------------------------
def test_folder_helpers(home: Path) -> None:
    path = env_notify_dir("task-1")
    assert path == home / "state" / "isofeat" / "notify" / "task-1"
    assert not path.exists()
    assert ensure_env_notify_dir("task-1") == path
    assert ensure_env_notify_dir("task-1") == path  # idempotent
    assert stat.S_IMODE(path.stat().st_mode) == 0o770
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert count_pending("task-1") == 0
    (path / f"1-{'a' * 32}.json").write_text("{}")
    (path / ".tmp").write_text("{}")
    assert count_pending("task-1") == 1
    assert remove_env_notify_dir("task-1") is True
    assert not path.exists()
    assert remove_env_notify_dir("task-1") is False


@pytest.mark.parametrize("bad", ["../x", "/abs", "A", "a b", "-x", "a\nb", "", "x" * 64, "."])
def test_bad_env_ids_are_refused(home: Path, bad: str) -> None:
    with pytest.raises(IsofeatError):
        ensure_env_notify_dir(bad)
    assert not (home / "state").exists()


def test_env_folder_symlink_is_refused_and_removed_as_a_link(home: Path) -> None:
    outside = home / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = env_notify_dir("task-2").parent
    root.mkdir(parents=True)
    (root / "task-2").symlink_to(outside)
    with pytest.raises(IsofeatError, match="not a real folder"):
        ensure_env_notify_dir("task-2")
    assert remove_env_notify_dir("task-2") is True
    assert (outside / "keep").read_text() == "keep"

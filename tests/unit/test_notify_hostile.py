"""Security case 16: the notification folders are written by sandboxes and are hostile.

Every test runs the real watcher (`isofeat notify watch --once`) over a real folder holding
real symlinks, FIFOs, oversized and malformed files, and checks what reaches the terminal
and what is left on disk, including a canary file outside the root that must not change.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from isofeat.cli import main
from isofeat.notify import ensure_env_notify_dir
from isofeat.notify.message import MAX_FILE_BYTES


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    ensure_env_notify_dir("env-a")
    ensure_env_notify_dir("env-b")
    return tmp_path / "state" / "isofeat" / "notify"


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A file outside the root. The watcher must never read, change or remove it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "canary.txt"
    path.write_text("canary: do not touch\n")
    path.chmod(0o600)
    before = path.stat()
    yield path
    after = path.stat()
    assert path.read_text() == "canary: do not touch\n"
    assert (after.st_mtime_ns, after.st_mode, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_mode,
        before.st_size,
        before.st_ino,
    )


def name(stamp: int = 1) -> str:
    return f"{stamp}-{secrets.token_hex(16)}.json"


def doc(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "id": secrets.token_hex(16),
        "urgency": "info",
        "message": "hello",
        "created": "2025-01-01T00:00:00Z",
    }
    base.update(fields)
    return base


def put(folder: Path, content: object, stamp: int = 1) -> Path:
    path = folder / name(stamp)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def watch_once(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, str]:
    rc = main(["notify", "watch", "--once", "--backend", "stdout", *extra])
    out, err = capsys.readouterr()
    assert rc == 0
    return out, err


def assert_terminal_safe(text: str) -> None:
    """Nothing but printable text and line ends: no ESC, no C0/C1, no bidi or format chars."""
    for ch in text:
        if ch == "\n":
            continue
        assert unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"), repr(ch)


# --- symlinks ---------------------------------------------------------------------------------
def test_symlink_to_outside_file_is_removed_as_link_never_followed(
    root: Path, canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = root / "env-a" / name()
    link.symlink_to(canary)
    out, err = watch_once(capsys)
    assert out == ""
    assert "symlink, not followed; removed" in err
    assert not os.path.lexists(link)  # the link itself is gone; the canary fixture checks the rest


def test_symlink_to_a_valid_notification_outside_is_not_shown(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "outside-valid.json"
    target.write_text(json.dumps(doc(message="read through a link")))
    (root / "env-a" / name()).symlink_to(target)
    (root / "env-a" / name(2)).symlink_to(tmp_path)  # and a link to a folder
    out, _ = watch_once(capsys)
    assert "read through a link" not in out and out == ""
    assert target.exists() and tmp_path.is_dir()
    assert list((root / "env-a").iterdir()) == []


def test_env_folder_that_is_a_symlink_is_skipped(
    root: Path, tmp_path: Path, canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = canary.parent
    planted = put(outside, doc(message="via a symlinked env folder"))
    (root / "env-evil").symlink_to(outside)
    out, err = watch_once(capsys)
    assert out == ""
    assert "not a real folder" in err
    assert planted.exists()  # nothing outside the root is removed
    assert (root / "env-evil").is_symlink()
    # Reported once per run, not once per scan of a long-running watcher.
    assert err.count("env-evil") == 1


# --- FIFOs, folders, devices ------------------------------------------------------------------
def test_fifo_never_blocks_the_watcher(root: Path) -> None:
    fifo = root / "env-a" / name(1)
    os.mkfifo(fifo)
    put(root / "env-a", doc(message="after the fifo"), stamp=2)
    # A subprocess with a timeout: if the FIFO were opened blocking, this would hang forever.
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "isofeat", "notify", "watch", "--once", "--backend", "stdout"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 0, result.stderr
    assert "not a regular file" in result.stderr
    assert "[env-a] INFO after the fifo" in result.stdout
    assert not os.path.lexists(fifo)


def test_folders_inside_an_env_folder_are_removed_without_following_links(
    root: Path, tmp_path: Path, canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = root / "env-a" / "nested"
    nested.mkdir()
    inner = put(nested, doc(message="one level too deep"))
    (nested / "to-canary").symlink_to(canary)
    (nested / "to-outside").symlink_to(canary.parent, target_is_directory=True)
    disguised = root / "env-a" / name()
    disguised.mkdir()
    hidden = root / "env-a" / ".hidden-folder"
    hidden.mkdir()
    # Deeper than the watcher keeps open at once: moved up and removed in later passes.
    deep = root / "env-a" / "deep"
    os.makedirs(deep / "/".join(["d"] * 80) / "leaf")
    (deep / "d" / "link").symlink_to(canary.parent, target_is_directory=True)
    out, err = watch_once(capsys)
    assert out == ""
    assert not inner.exists() and not disguised.exists() and not hidden.exists()
    assert err.count("a folder; removed") >= 3
    for _ in range(5):  # a deep tree takes a few passes
        if sorted(os.listdir(root / "env-a")) == []:
            break
        watch_once(capsys)
    assert sorted(os.listdir(root / "env-a")) == []
    assert sorted(os.listdir(canary.parent)) == ["canary.txt"]  # the canary fixture checks it


def test_stale_hidden_files_go_and_young_ones_stay(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    young = root / "env-a" / ".1-abc.json.123.tmp"
    young.write_text("a sender at work")
    watch_once(capsys)
    assert young.exists()  # a sender's temporary file is left alone while it is young
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    watch_once(capsys)
    assert not young.exists()


def test_socket_is_rejected(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    path = root / "env-a" / name()
    # AF_UNIX paths are limited to ~108 bytes; bind through a short relative path.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(cwd)
    out, err = watch_once(capsys)
    assert out == "" and "not a regular file" in err
    assert not os.path.lexists(path)


# --- size cap ---------------------------------------------------------------------------------
def test_size_cap(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = json.dumps(doc(message="exactly at the cap")).encode()
    at_cap = put(root / "env-a", body + b" " * (MAX_FILE_BYTES - len(body)), stamp=1)
    over = put(root / "env-a", body + b" " * (MAX_FILE_BYTES + 1 - len(body)), stamp=2)
    assert at_cap.stat().st_size == MAX_FILE_BYTES and over.stat().st_size == MAX_FILE_BYTES + 1
    huge = root / "env-a" / name(3)
    with huge.open("wb") as fh:  # sparse 8 GiB: rejected by fstat, never read
        fh.truncate(8 * 1024**3)
    started = time.monotonic()
    out, err = watch_once(capsys)
    assert time.monotonic() - started < 10
    assert out.count("\n") == 1 and "exactly at the cap" in out
    assert err.count(f"larger than {MAX_FILE_BYTES} bytes; removed") == 2
    assert list((root / "env-a").iterdir()) == []


# --- content ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[" * 50 + "]" * 50, "schema violation"),  # valid JSON, wrong type
        ("[" * 5000 + "]" * 5000, "nested too deeply"),  # must not crash the watcher
        ('{"a":' * 2000 + "1" + "}" * 2000, "nested too deeply"),
        ("", "not valid JSON"),
        ("null", "schema violation"),
        (doc(urgency="urgent"), "schema violation at 'urgency'"),
        (doc(v=2), "schema violation at 'v'"),
        (doc(id="../../etc/passwd"), "schema violation at 'id'"),
        (doc(message="x" * 2001), "schema violation at 'message'"),
        (doc(message=""), "schema violation at 'message'"),
        (doc(message=7), "schema violation at 'message'"),
        (doc(created="yesterday; rm -rf /"), "schema violation at 'created'"),
        (doc(source="$(id)"), "schema violation at 'source'"),
        (doc(env="env-b"), "schema violation at '(top level)' (additionalProperties)"),
        ({k: v for k, v in doc().items() if k != "message"}, "(required)"),
        (doc(message="\x1b[31m\x00\u202e"), "empty once control characters are removed"),
    ],
)
def test_invalid_content_is_rejected_and_removed(
    root: Path, capsys: pytest.CaptureFixture[str], content: object, reason: str
) -> None:
    path = put(root / "env-a", content)
    out, err = watch_once(capsys)
    assert out == ""
    assert reason in err and "; removed" in err
    assert not path.exists()
    assert_terminal_safe(err)


HOSTILE_MESSAGES = [
    "\x1b]0;owned title\x07 \x1b]52;c;cGF5bG9hZA==\x07 osc and clipboard",
    "\x1b[2J\x1b[H\x1b[31mred\x1b[0m clear screen",
    "\x9b31m c1 csi \x9d8;;http://evil\x9c c1 osc",
    "nul\x00byte and bell\x07 and del\x7f",
    "bidi \u202egnp.exe\u202c \u2066isolate\u2069 \u200bzero width",
    "lone surrogate \ud800 here",
    "line\u2028[env-b] BLOCKED forged\u2029para",
]


@pytest.mark.parametrize("as_json", [False, True])
def test_escapes_and_controls_never_reach_the_terminal(
    root: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    for stamp, message in enumerate(HOSTILE_MESSAGES):
        # json.dumps escapes these as \uXXXX: valid JSON that decodes to the raw characters.
        put(root / "env-a", doc(message=message, title="\x1b[5mblink\x1b[0m"), stamp=stamp)
    extra = ("--json",) if as_json else ()
    out, err = watch_once(capsys, *extra)
    assert_terminal_safe(out)
    assert_terminal_safe(err)
    assert "\x1b" not in out and "\x00" not in out
    lines = out.splitlines()
    assert len(lines) == len(HOSTILE_MESSAGES)  # one line each: no forged extra lines
    if as_json:
        shown = [json.loads(line) for line in lines]
        assert all(item["env"] == "env-a" for item in shown)
        messages = [item["message"] for item in shown]
        assert shown[0]["title"] == "blink"
    else:
        assert all(" [env-a] INFO blink: " in line for line in lines)
        messages = [line.split(" blink: ", 1)[1] for line in lines]
    assert messages[1] == "red clear screen"
    assert messages[3] == "nulbyte and bell and del"
    assert messages[4] == "bidi gnp.exe isolate zero width"
    assert messages[5] == "lone surrogate here"
    assert messages[6] == "line [env-b] BLOCKED forged para"
    assert "owned title" not in messages[0] and "cGF5bG9hZA" not in messages[0]
    assert "http://evil" not in messages[2]


def test_forged_label_in_content_does_not_change_the_label(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(
        root / "env-a",
        doc(title="[env-b] from env-b", message="\n[env-b] BLOCKED fake", urgency="blocked"),
    )
    out, _ = watch_once(capsys, "--json")
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["env"] == "env-a"
    put(root / "env-a", doc(title="[env-b] from env-b", message="\n[env-b] BLOCKED fake"))
    out, _ = watch_once(capsys)
    [line] = out.splitlines()
    assert line.split(" ", 2)[1] == "[env-a]"  # the label comes first, from the folder


def test_shell_metacharacters_are_data(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("still here")
    pwned = tmp_path / "pwned"
    messages = [
        f"$(touch {pwned}1)",
        f"`touch {pwned}2`",
        f"; rm -rf {victim} ; touch {pwned}3",
        f"' && touch {pwned}4 && echo '",
        f'" & (do shell script "touch {pwned}5") & "',
        "--help -u critical",
    ]
    # A stand-in notify-send (none on this host) that records its argv without a shell eval.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    tool = bin_dir / "notify-send"
    tool.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> '{log}'\nprintf '\\n' >> '{log}'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for stamp, message in enumerate(messages):
        put(root / "env-a", doc(message=message, title=message[:20]), stamp=stamp)
    rc = main(["notify", "watch", "--once", "--backend", "desktop"])
    capsys.readouterr()
    assert rc == 0
    bodies = [entry.split("\0")[-1] for entry in log.read_text().split("\0\n") if entry]
    assert bodies == [m.replace("&", "&amp;") for m in messages]  # verbatim, one argv item
    for stamp, message in enumerate(messages):
        put(root / "env-b", doc(message=message), stamp=stamp)
    out, _ = watch_once(capsys)
    assert all(m in out for m in messages)
    assert not list(tmp_path.glob("pwned*"))
    assert (victim / "file").read_text() == "still here"


def test_hostile_file_names_are_rejected_and_reported_safely(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pwned = tmp_path / "pwned"
    names = [
        f"$(touch {pwned}).json".replace("/", "_"),
        "\x1b[31mred\x1b[0m.json",
        "line\nbreak.json",
        "notes.txt",
        "1-abc.json",
    ]
    for bad in names:
        (root / "env-a" / bad).write_text(json.dumps(doc()))
    out, err = watch_once(capsys)
    assert out == ""
    assert err.count("unexpected file name; removed") == len(names)
    assert_terminal_safe(err)
    assert "\\x1b" in err  # shown escaped, so the user can see what was there
    assert list((root / "env-a").iterdir()) == []
    assert not pwned.exists()


def test_odd_names_at_the_root_are_left_alone(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = root / "Not An Env"
    odd.mkdir()
    inner = put(odd, doc(message="should not be shown"))
    (root / "stray.json").write_text(json.dumps(doc()))
    out, err = watch_once(capsys)
    assert out == ""
    assert inner.exists() and (root / "stray.json").exists()
    assert err.count("not an environment id") == 2


# --- rate limit -------------------------------------------------------------------------------
def test_flood_is_rate_limited_per_environment_with_one_summary_line(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for stamp in range(50):
        put(root / "env-a", doc(message=f"flood {stamp}"), stamp=stamp)
    for stamp in range(3):
        put(root / "env-b", doc(message=f"calm {stamp}"), stamp=stamp)
    out, err = watch_once(capsys)
    lines = out.splitlines()
    assert sum("[env-a]" in line for line in lines) == 10
    assert sum("[env-b]" in line for line in lines) == 3  # one flood does not starve another
    assert "flood 0" in out and "flood 9" in out and "flood 10" not in out
    summary = [line for line in err.splitlines() if "dropped" in line]
    assert summary == [
        "isofeat notify: [env-a] dropped 40 notification(s): rate limit is "
        "10 per minute per environment"
    ]
    assert list((root / "env-a").iterdir()) == []  # dropped means removed


# --- the bind-mount situation: written by uid 1001, read by the host user ----------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root")
def test_files_from_the_container_user_are_read_and_removed_by_the_host_user() -> None:
    from isofeat.notify import watch as watch_module
    from isofeat.notify.message import validate
    from isofeat.notify.send import send

    # Load everything before dropping privileges: the interpreter's own files may not be
    # readable by the other uids (the stdlib lives under /root here).
    validate(json.dumps(doc()).encode())
    assert watch_module.Processor is not None and send is not None
    import tempfile as _  # noqa: F401  # used by isofeat.atomic in the child

    host_uid, sandbox_uid, dev_gid = 1000, 1001, 2000
    base = Path(tempfile.mkdtemp(prefix="isofeat-notify-uid-", dir="/tmp"))
    mounts: list[Path] = []
    try:
        base.chmod(0o755)
        root = base / "notify"
        root.mkdir(mode=0o700)
        os.chown(root, host_uid, host_uid)
        env_dir = root / "env-a"
        env_dir.mkdir()
        os.chown(env_dir, host_uid, dev_gid)  # what `isofeat init` has to arrange on Linux
        env_dir.chmod(0o770)

        def as_user(uid: int, gid: int, groups: list[int], fn: object) -> int:
            pid = os.fork()
            if pid == 0:  # child
                code = 70
                try:
                    os.setgroups(groups)
                    os.setgid(gid)
                    os.setuid(uid)
                    code = fn()  # type: ignore[operator]
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        out_file = base / "out.txt"
        out_file.touch()
        out_file.chmod(0o666)

        # The container sees the folder as a bind mount, without the host's 0700 root on
        # its path: mount it the same way here.
        mount_point = base / "run-isofeat-notify"
        mount_point.mkdir()
        mounted = subprocess.run(
            ["mount", "--bind", str(env_dir), str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        mounts.append(mount_point)
        if mounted.returncode != 0:
            mounts.clear()
            pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")

        def sandbox_send() -> int:
            return send(
                "blocked",
                "from uid 1001",
                "please review",
                environ={"ISOFEAT_NOTIFY_DIR": str(mount_point)},
            )

        def host_watch() -> int:
            with open(out_file, "w", encoding="utf-8") as fh:
                return watch_module.watch(root, "stdout", once=True, stdout=fh, stderr=fh)

        assert as_user(sandbox_uid, dev_gid, [dev_gid], sandbox_send) == 0
        [written] = list(env_dir.iterdir())
        assert written.stat().st_uid == sandbox_uid
        assert as_user(host_uid, host_uid, [host_uid], host_watch) == 0
        assert "[env-a] BLOCKED from uid 1001: please review" in out_file.read_text()
        assert list(env_dir.iterdir()) == []
    finally:
        import shutil

        for mount_point in mounts:
            subprocess.run(["umount", str(mount_point)], check=True)
        shutil.rmtree(base)


def test_nothing_outside_the_root_changes_in_a_mixed_attack(
    root: Path, canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = root / "env-a"
    (env / name(1)).symlink_to(canary)
    (env / name(2)).symlink_to(canary.parent)
    os.mkfifo(env / name(3))
    put(env, "{bad", stamp=4)
    put(env, doc(message="the one good notification"), stamp=5)
    (root / "env-link").symlink_to(canary.parent)
    before = sorted(p.name for p in canary.parent.iterdir())
    out, _ = watch_once(capsys)
    assert out.count("\n") == 1 and "the one good notification" in out
    assert sorted(p.name for p in canary.parent.iterdir()) == before
    assert list(env.iterdir()) == []
    assert stat.S_ISLNK((root / "env-link").lstat().st_mode)

"""Faults and load for the notification path (issue 11, items 6 and 7).

- The host watcher is SIGKILLed during a burst, several times, and restarted: every
  notification is shown across its lives, and twice only as a re-show the restarted watcher
  marks (a kill between the line and its journal record; the journal in watch.py).
- A burst of 1,000 notifications from one environment is rate-limited and counted, and a
  second environment's notification written during it is shown within a measured bound.
- The folder bound: ``send`` refuses past it, and the watcher drops and counts the excess.

Every result goes into the security report (tests/report.py).
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isofeat.cli import main
from isofeat.notify import MAX_PENDING_ENTRIES, ensure_env_notify_dir
from isofeat.notify.backends import RECOVERED_MARK
from isofeat.notify.watch import JOURNAL_NAME, RATE_PER_MINUTE


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "isofeat" / "notify"


def put(folder: Path, message: str) -> str:
    """Write one notification as `send` does (temporary dot-file, then a rename); its id."""
    note_id = secrets.token_hex(16)
    doc = {"v": 1, "id": note_id, "urgency": "info", "message": message,
           "created": "2025-01-01T00:00:00Z"}
    final = folder / f"{time.time_ns()}-{note_id}.json"
    tmp = folder / f".{final.name}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, final)
    return note_id


class Watcher:
    """The real `isofeat notify watch --json` in a subprocess; its lines arrive in a queue."""

    def __init__(self, root: Path, backend: str = "stdout",
                 environ: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isofeat", "notify", "watch", "--json", "--backend",
             backend, "--root", str(root)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.err: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        for line in self.proc.stdout or []:
            self.lines.put((time.monotonic(), json.loads(line)))

    def _read_err(self) -> None:
        self.err.extend(self.proc.stderr or [])

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler, no cleanup
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def next(self, timeout: float) -> tuple[float, dict[str, Any]]:
        item = self.lines.get(timeout=timeout)
        self.seen.append(item)
        return item

    def wait_for(self, note_id: str, timeout: float) -> float:
        """When the notification ``note_id`` was shown (monotonic clock)."""
        deadline = time.monotonic() + timeout
        for at, rec in self.seen:
            if rec["id"] == note_id:
                return at
        while time.monotonic() < deadline:
            try:
                at, rec = self.next(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if rec["id"] == note_id:
                return at
        pytest.fail(f"{note_id} not shown within {timeout}s; stderr: {self.err[-5:]}")

    def drain(self) -> list[dict[str, Any]]:
        """Every line this watcher printed (call after it ended)."""
        time.sleep(0.2)  # the reader thread empties the pipe after the process ended
        while True:
            try:
                self.next(timeout=0.01)
            except queue.Empty:
                return [rec for _, rec in self.seen]


@pytest.fixture
def watchers(root: Path) -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        if watcher.proc.poll() is None:
            watcher.kill()


def wait_until_empty(folders: list[Path], timeout: float) -> float:
    started = time.monotonic()
    while any(any(f.iterdir()) for f in folders):
        if time.monotonic() - started > timeout:
            left = [list(f.iterdir()) for f in folders]
            pytest.fail(f"folders not emptied in {timeout}s: {left}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_watcher_killed_during_a_burst_loses_nothing_and_marks_a_repeat(
    root: Path, watchers: list[Watcher], security_report: Any
) -> None:
    # 60 environments x 10 each: within each one's rate limit whatever process shows them,
    # so every notification must be shown, exactly once. Paced to outlast the kills.
    envs = [f"env-{i:02d}" for i in range(60)]
    folders = [ensure_env_notify_dir(env) for env in envs]
    probe = ensure_env_notify_dir("env-probe")
    sent: dict[str, str] = {}
    kills = 3
    watchers.append(Watcher(root))
    time.sleep(1.0)  # started and watching

    kills_done: list[int] = []

    def burst() -> None:
        for n in range(RATE_PER_MINUTE):
            # Rounds keep pace with the kills (on a loaded machine a restart can take seconds),
            # and the last waits for the last kill: every kill falls inside the burst.
            wanted = kills if n == RATE_PER_MINUTE - 1 else n * kills // RATE_PER_MINUTE
            while len(kills_done) < wanted:
                time.sleep(0.01)
            for env, folder in zip(envs, folders, strict=True):
                sent[put(folder, f"{env} #{n}")] = env
                time.sleep(0.01)

    writer = threading.Thread(target=burst)
    writer.start()
    recoveries = []
    during = 0
    for _ in range(kills):
        time.sleep(0.3)
        during += writer.is_alive()
        watchers[-1].kill()
        killed = time.monotonic()
        kills_done.append(1)
        watchers.append(Watcher(root))
        # Recovery: from the kill until a new notification is shown by the new watcher.
        probe_id = put(probe, "probe after a kill")
        sent[probe_id] = "env-probe"
        recoveries.append(watchers[-1].wait_for(probe_id, timeout=30) - killed)
    writer.join()
    drained_in = wait_until_empty([*folders, probe], 60)
    assert watchers[-1].stop() == 0
    shown = [rec for w in watchers for rec in w.drain()]
    ids = [rec["id"] for rec in shown]
    lost = set(sent) - set(ids)
    repeated = {i for i in ids if ids.count(i) > 1}
    # A kill between a line and its journal record repeats that one notification (no
    # process can make two writes one step); the restarted watcher must say so.
    marked = [rec["id"] for rec in shown if rec["recovered"]]
    unmarked = [i for i in repeated
                if ids.count(i) != 2 or [r["recovered"] for r in shown if r["id"] == i]
                != [False, True]]
    wrong_label = [rec for rec in shown if sent.get(rec["id"]) != rec["env"]]
    leftover = [p for f in folders for p in f.iterdir()] + list(root.glob(JOURNAL_NAME))
    print(f"{len(sent)} sent, {len(shown)} shown by {len(watchers)} watcher lives; "
          f"first line after each SIGKILL+restart {[f'{r:.2f}' for r in recoveries]} s; "
          f"folders empty {drained_in:.2f} s after the burst")
    security_report.fault(
        "fault: notify watcher killed",
        f"SIGKILL `isofeat notify watch` {kills} times during a burst of {len(sent)} "
        "notifications from 60 environments, restart it each time",
        expected="every notification shown, none left in the folders; shown twice only "
        "when a kill fell between its line and its journal record, then the second time "
        "marked as recovered (so at most one per kill)",
        observed=f"{len(ids)} shown, {len(lost)} lost, {len(repeated)} repeated "
        f"({len(unmarked)} of them not marked), {len(marked)} marked, {len(wrong_label)} "
        f"mislabelled, {len(leftover)} files left; {during} of the {kills} kills during the "
        "burst",
        ok=not lost and not unmarked and len(marked) <= kills and not wrong_label
        and not leftover and len(ids) == len(sent) + len(repeated) and during == kills,
        recovery_s=max(recoveries),
        repeated=len(repeated),
    )


def test_a_watcher_killed_while_notify_send_runs_loses_nothing(
    root: Path, tmp_path: Path, watchers: list[Watcher], security_report: Any
) -> None:
    # A slow stand-in for notify-send that logs what it shows: the watcher spends most of
    # its time waiting on it, so the kills land there, where showing-then-removing repeats
    # a notification. The tool outlives the watcher (another process), as the real one does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "shown.log"
    tool = bin_dir / "notify-send"
    tool.write_text(f"#!/bin/sh\nsleep 0.05\nfor last; do :; done\necho \"$last\" >> '{log}'\n")
    tool.chmod(0o755)
    environ = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    envs = [f"env-{i}" for i in range(8)]
    folders = [ensure_env_notify_dir(env) for env in envs]
    messages = [f"{env} note {n}" for n in range(RATE_PER_MINUTE) for env in envs]
    for message, folder in zip(messages, folders * RATE_PER_MINUTE, strict=True):
        put(folder, message)
    kills = 4
    watchers.append(Watcher(root, "desktop", environ))
    for _ in range(kills):
        time.sleep(0.6)
        watchers[-1].kill()
        watchers.append(Watcher(root, "desktop", environ))
    wait_until_empty(folders, 60)
    time.sleep(1)  # the last tool runs finish
    assert watchers[-1].stop() == 0
    shown = log.read_text().splitlines()
    lost = set(messages) - set(shown)
    repeated = {m for m in shown if shown.count(m) > 1}
    print(f"{len(messages)} notifications, {len(shown)} shown by the desktop tool, "
          f"{kills} kills; lost {len(lost)}, repeated {len(repeated)}")
    security_report.fault(
        "fault: notify watcher killed",
        f"SIGKILL the watcher {kills} times while a slow notify-send shows a backlog of "
        f"{len(messages)} notifications, restart it each time",
        # The journal is marked done as soon as the tool is started: a kill in the few ms
        # Popen takes to start it can still repeat one (measured: 2 in 32 kills; with done
        # written after the tool ended, as a plain show-then-remove does, 6 in 8 kills).
        expected="none lost; a repeat only for a kill in the milliseconds the tool takes to "
        f"start (at most 2 of the {kills} kills)",
        observed=f"{len(shown)} shown, {len(lost)} lost, {len(repeated)} repeated",
        ok=not lost and len(repeated) <= 2 and set(shown) == set(messages),
        repeated=len(repeated),
    )


def test_a_journal_left_by_a_kill_is_shown_once_and_its_file_removed(
    root: Path, capsys: pytest.CaptureFixture[str], security_report: Any
) -> None:
    # The two kill points the journal exists for, set up exactly: claimed but not removed
    # (file still there), and removed but not shown (file gone).
    folder = ensure_env_notify_dir("env-a")
    records = []
    for n, keep_file in ((1, True), (2, False)):
        note_id = put(folder, f"claimed {n}")
        path = next(p for p in folder.iterdir() if note_id in p.name)
        records.append(json.dumps({"claim": f"env-a/{path.name}", "env": "env-a",
                                   "name": path.name, "data": path.read_text()}))
        if not keep_file:
            path.unlink()
    (root / JOURNAL_NAME).write_text("\n".join(records) + "\n" + '{"claim": "cut')
    assert main(["notify", "watch", "--once", "--backend", "stdout"]) == 0
    out = capsys.readouterr().out
    assert main(["notify", "watch", "--once", "--backend", "stdout"]) == 0
    again = capsys.readouterr().out
    shown = [out.count(f"claimed {n}{RECOVERED_MARK}") for n in (1, 2)]
    security_report.fault(
        "fault: notify watcher killed",
        "a journal left by a kill after the claim (file still there) and after the removal "
        "(file gone), plus a line cut by the kill",
        expected="both shown once on restart, each marked as possibly a repeat, the file "
        "removed, the journal removed",
        observed=f"shown {shown}, then {again.count('claimed')} on the next run; files left "
        f"{len(list(folder.iterdir()))}; journal left {(root / JOURNAL_NAME).exists()}",
        ok=shown == [1, 1] and again == "" and not list(folder.iterdir())
        and not (root / JOURNAL_NAME).exists(),
    )


def test_a_second_watcher_on_the_same_root_is_refused(
    root: Path, watchers: list[Watcher], capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_env_notify_dir("env-a")
    watchers.append(Watcher(root))
    deadline = time.monotonic() + 20
    while not (root / JOURNAL_NAME).exists():
        assert time.monotonic() < deadline, "the watcher did not start"
        time.sleep(0.05)
    time.sleep(0.3)
    assert main(["notify", "watch", "--once", "--backend", "stdout"]) == 2
    assert "another `isofeat notify watch` is running" in capsys.readouterr().err
    assert watchers[0].stop() == 0
    assert not (root / JOURNAL_NAME).exists()


def test_a_burst_of_1000_is_rate_limited_counted_and_others_still_served(
    root: Path, watchers: list[Watcher], security_report: Any
) -> None:
    noisy = ensure_env_notify_dir("env-noisy")
    quiet = ensure_env_notify_dir("env-quiet")
    watchers.append(Watcher(root))
    time.sleep(1.0)
    burst = 1000
    started = time.monotonic()
    written_quiet: list[float] = []

    def flood() -> None:
        # As an agent that bypasses `send` (and its bound) and writes files itself.
        for n in range(burst):
            put(noisy, f"flood {n}")
            if n == burst // 2:
                written_quiet.append(time.monotonic())
                put(quiet, "quiet one, during the flood")

    writer = threading.Thread(target=flood)
    writer.start()
    quiet_seen = None
    deadline = time.monotonic() + 60
    while quiet_seen is None and time.monotonic() < deadline:
        try:
            at, rec = watchers[0].next(timeout=1)
        except queue.Empty:
            continue
        if rec["env"] == "env-quiet":
            quiet_seen = at
    writer.join()
    flood_s = time.monotonic() - started
    drained_in = wait_until_empty([noisy, quiet], 60)
    assert watchers[0].stop() == 0
    seen = watchers[0].drain()
    noisy_shown = sum(rec["env"] == "env-noisy" for rec in seen)
    counted = sum(int(m) for m in re.findall(r"\[env-noisy\] dropped (\d+)",
                                             "".join(watchers[0].err)))
    latency = (quiet_seen - written_quiet[0]) if quiet_seen and written_quiet else float("inf")
    print(f"{burst} written in {flood_s:.2f} s; env-noisy: {noisy_shown} shown, {counted} "
          f"counted as dropped; env-quiet shown {latency:.2f} s after it was written; "
          f"folders empty {drained_in:.2f} s after the flood; stderr: {watchers[0].err[-3:]}")
    security_report.load(
        "load: notification burst",
        f"{burst} notifications from one environment as fast as it can write, one from a "
        "second environment halfway",
        expected=f"{RATE_PER_MINUTE} shown, the rest dropped and counted, the other one "
        "shown within 5 s",
        observed=f"{noisy_shown} shown, {counted} counted as dropped, the other shown after "
        f"{latency:.2f} s",
        ok=noisy_shown == RATE_PER_MINUTE and noisy_shown + counted == burst and latency < 5,
        tried=burst, failed=0 if noisy_shown + counted == burst else burst - noisy_shown - counted,
        other_env_latency_s=latency, flood_s=flood_s, drained_s=drained_in,
    )


def test_send_refuses_past_the_folder_bound_and_the_watcher_drops_the_excess(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    security_report: Any,
) -> None:
    folder = ensure_env_notify_dir("env-a")
    monkeypatch.setenv("ISOFEAT_NOTIFY_DIR", str(folder))
    sent = refused = 0
    for n in range(MAX_PENDING_ENTRIES + 5):
        rc = main(["notify", "send", "--urgency", "info", f"note {n}"])
        sent += rc == 0
        refused += rc == 2
    err = capsys.readouterr().err
    hook = main(["notify", "send", "--from-hook", "codex",
                 json.dumps({"type": "agent-turn-complete", "last-assistant-message": "x"})])
    capsys.readouterr()
    # An agent writes past the bound by hand; the watcher takes the oldest 100.
    for n in range(50):
        put(folder, f"by hand {n}")
    assert main(["notify", "watch", "--once", "--backend", "stdout"]) == 0
    out, watch_err = capsys.readouterr()
    over = re.search(r"\[env-a\] dropped (\d+) notification\(s\): the folder held more", watch_err)
    rate = re.search(r"\[env-a\] dropped (\d+) notification\(s\): rate limit", watch_err)
    shown = out.count("[env-a] INFO")
    security_report.fault(
        "fault: notification folder full",
        f"send {MAX_PENDING_ENTRIES + 5} with no watcher running, then write 50 more by hand",
        expected=f"send refuses past {MAX_PENDING_ENTRIES} (exit 2, hook mode exit 1); the "
        "watcher shows 10, drops and counts the rest, and leaves the folder empty",
        observed=f"{sent} sent, {refused} refused, hook exit {hook}; watcher: {shown} shown, "
        f"{over and over.group(1)} over the bound, {rate and rate.group(1)} over the rate; "
        f"{len(list(folder.iterdir()))} left",
        ok=sent == MAX_PENDING_ENTRIES and refused == 5 and hook == 1 and "is full" in err
        and shown == RATE_PER_MINUTE and over is not None and int(over.group(1)) == 50
        and rate is not None and int(rate.group(1)) == MAX_PENDING_ENTRIES - RATE_PER_MINUTE
        and not list(folder.iterdir()),
    )


def test_removing_an_environment_removes_what_its_agent_left_and_nothing_outside(
    root: Path, tmp_path: Path, security_report: Any
) -> None:
    from isofeat.notify import remove_env_notify_dir

    folder = ensure_env_notify_dir("env-a")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("keep")
    put(folder, "never shown")
    (folder / "link-out").symlink_to(outside, target_is_directory=True)
    (folder / "junk").mkdir()
    (folder / "junk" / "link-file").symlink_to(outside / "canary")
    # Deeper than Python's recursion allows shutil.rmtree to go.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3000):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.symlink(str(outside), "deep-link", dir_fd=fd)
    finally:
        os.close(fd)
    assert remove_env_notify_dir("env-a") is True
    left = sorted(p.name for p in root.iterdir())
    security_report.fault(
        "fault: notification folder full",
        "remove an environment (`isofeat task rm`) whose agent left a notification, links out "
        "of the folder and a tree 3,000 folders deep",
        expected="the folder is gone with everything in it; nothing outside is touched",
        observed=f"left in the root {left}; outside {sorted(p.name for p in outside.iterdir())}"
        f" with {(outside / 'canary').read_text()!r}",
        ok=left == [] and (outside / "canary").read_text() == "keep"
        and sorted(p.name for p in outside.iterdir()) == ["canary"],
    )

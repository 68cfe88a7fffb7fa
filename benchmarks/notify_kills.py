"""How often a SIGKILLed `isofeat notify watch` repeats or loses a notification.

    python -m benchmarks.notify_kills [--kills 100] [--envs 200] [--no-rate-limit]

A host thread writes notifications with `isofeat notify send`'s own writer (a dot-file,
then a rename; "refused" counts those it refused past the folder bound), one every 5 ms
spread over ``--envs`` environment folders, while the real watcher (`notify watch --json
--backend stdout`) prints them to a pipe. The watcher is SIGKILLed at a random moment
0.2-0.6 s into each life and started again. At the end, every notification
sent must have been shown: "lost" counts those that were not, "dropped" those the rate limit
dropped and said so. A repeat is a notification shown twice; "unmarked" counts repeats whose
second showing lacks the ``recovered`` mark. ``--no-rate-limit`` lifts the per-environment
limit (in this process's copy of the watcher only), so that every notification must be shown.
The figures are in docs/notifications.md. Not part of the harness: it measures a fault, not
a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

# Run as the watcher's process with --no-rate-limit: the real CLI, with a rate it never hits.
UNLIMITED = """
import functools, sys
import isofeat.notify.watch as watch
watch.RateLimiter = functools.partial(watch.RateLimiter, rate=10**6)
from isofeat.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Lives:
    """The watcher's successive processes; their JSON lines land in one list."""

    def __init__(self, root: Path, unlimited: bool, err: IO[str]) -> None:
        head = [sys.executable, "-c", UNLIMITED] if unlimited else [sys.executable, "-m",
                                                                    "isofeat"]
        self.argv = [*head, "notify", "watch", "--json", "--backend", "stdout", "--root",
                     str(root)]
        self.err = err
        self.lines: list[dict[str, Any]] = []
        self.proc, self.reader = self._start()

    def _start(self) -> tuple[subprocess.Popen[str], threading.Thread]:
        proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.err, text=True)
        reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        reader.start()
        return proc, reader

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout or []:
            self.lines.append(json.loads(line))

    def kill_and_restart(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        self.proc, self.reader = self._start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.reader.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--envs", type=int, default=200)
    parser.add_argument("--no-rate-limit", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="isofeat-notify-kills-"))
    os.environ["HOME"] = str(base / "home")
    os.environ["XDG_STATE_HOME"] = str(base / "state")
    # After HOME: it decides the root.
    from isofeat.errors import IsofeatError
    from isofeat.notify import ensure_env_notify_dir
    from isofeat.notify.message import Notification
    from isofeat.notify.send import write_notification

    root = base / "state" / "isofeat" / "notify"
    folders = [ensure_env_notify_dir(f"env-{i:04d}") for i in range(args.envs)]
    sent: list[str] = []
    refused = 0
    writing = threading.Event()
    writing.set()

    def write() -> None:
        # As `isofeat notify send` writes, which refuses past the folder bound.
        nonlocal refused
        while writing.is_set():
            note = Notification(urgency="info", message="m", id=secrets.token_hex(16),
                                created="2025-01-01T00:00:00Z")
            try:
                write_notification(note, folders[(len(sent) + refused) % len(folders)])
            except IsofeatError:
                refused += 1
            else:
                sent.append(note.id)
            time.sleep(0.005)

    with open(base / "watcher-stderr.log", "w") as err:
        lives = Lives(root, args.no_rate_limit, err)
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(1)
        for done in range(args.kills):
            time.sleep(random.uniform(0.2, 0.6))
            lives.kill_and_restart()
            print(f"\r{done + 1}/{args.kills} kills", end="", file=sys.stderr, flush=True)
        writing.clear()
        writer.join()
        deadline = time.monotonic() + 60
        while any(any(f.iterdir()) for f in folders) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        lives.stop()
    print(file=sys.stderr)
    said = (base / "watcher-stderr.log").read_text()
    ids = [line["id"] for line in lives.lines]
    counts: dict[str, int] = {}
    for note_id in ids:
        counts[note_id] = counts.get(note_id, 0) + 1
    repeated = [i for i, n in counts.items() if n > 1]
    marks = {i: [line["recovered"] for line in lives.lines if line["id"] == i] for i in repeated}
    print(json.dumps({
        "kills": args.kills, "envs": args.envs, "rate_limit": not args.no_rate_limit,
        "sent": len(sent), "refused": refused, "shown": len(ids), "repeated": len(repeated),
        "unmarked": sum(1 for m in marks.values() if m != [False, True]),
        "lost": len(set(sent) - set(ids)),
        "dropped": sum(int(n) for n in re.findall(r"dropped (\d+) notification", said)),
        "left": sum(1 for f in folders for _ in f.iterdir()),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""5. Notifications: from a file written in a container to the watcher's line on the host.

`isofeat notify watch --backend stdout --json` runs on the host over a scratch root. A
container with an environment's folder bind-mounted at /run/isofeat/notify writes
notification files there the way `isofeat notify send` does (a dot-file, then a rename), one
every 250 ms, each carrying the wall-clock time of its rename (host and container share the
kernel's clock). The latency is the host's time when the watcher's JSON line arrives minus
that stamp. Each batch of ten gets an environment folder of its own: the watcher shows at most
10 a minute per environment and summarises the rest. Baseline: the same watcher, files
written by a host process into folders of the same root (no container, no bind mount), in the
same run.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from typing import IO

from benchmarks.harness import Context

IMAGE = "isofeat-bench/origin:1"  # any image with python3; this one the proxy bench builds
BATCH = 10  # notifications per environment folder: the watcher's RATE_PER_MINUTE

WRITER = """
import json, os, sys, time, uuid
folder, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(count):
    time.sleep(gap)
    nid = uuid.uuid4().hex
    name = '%d-%s.json' % (time.time_ns(), nid)
    tmp = os.path.join(folder, '.' + name + '.tmp')
    with open(tmp, 'w') as fh:
        stamp = time.time()
        fh.write(json.dumps({'v': 1, 'id': nid, 'urgency': 'info', 'message': repr(stamp),
                             'created': time.strftime('%Y-%m-%dT%H:%M:%S.000000Z', time.gmtime()),
                             'source': 'bench'}))
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(folder, name))
"""


def reader(stream: IO[str], out: queue.Queue[tuple[float, str]]) -> None:
    for line in stream:
        out.put((time.time(), line))


def collect(lines: queue.Queue[tuple[float, str]], count: int, timeout: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + timeout
    while len(latencies) < count and time.monotonic() < deadline:
        try:
            received, line = lines.get(timeout=1)
        except queue.Empty:
            continue
        try:
            stamp = float(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            continue
        latencies.append(received - stamp)
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float(
        "nan")


def run(ctx: Context) -> None:
    m = "notify"
    count = 5 if ctx.smoke else BATCH
    gap = 0.25
    root = ctx.scratch / "notify"
    root.mkdir(parents=True)
    root.chmod(0o700)
    # Every folder exists before the watcher starts, so no figure includes picking up a
    # new folder.
    for run_no in range(ctx.runs):
        for who in ("host", "ctr"):
            (root / f"bench-{who}-{run_no}").mkdir()
            (root / f"bench-{who}-{run_no}").chmod(0o777)
    env = {**os.environ, "XDG_STATE_HOME": str(ctx.scratch / "state")}
    watcher = subprocess.Popen(
        [ctx.isofeat, "notify", "watch", "--backend", "stdout", "--json", "--root", str(root)],
        stdout=subprocess.PIPE, stderr=(ctx.scratch / "watch.err").open("w"), text=True,
        env=env)
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    assert watcher.stdout is not None
    threading.Thread(target=reader, args=(watcher.stdout, lines), daemon=True).start()
    try:
        time.sleep(1.0)  # the watcher's observer is up
        host: list[list[float]] = []
        container: list[list[float]] = []
        for run_no in range(ctx.runs):
            ctx.progress(f"notify: {count} files from the host, run {run_no + 1}/{ctx.runs}")
            proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER),
                                     str(root / f"bench-host-{run_no}"), str(count), str(gap)])
            host.append(collect(lines, count, count * gap + 15))
            proc.wait(timeout=30)
            ctx.progress(f"notify: {count} files from a container, run {run_no + 1}/{ctx.runs}")
            proc = subprocess.Popen(
                ["docker", "run", "--rm", *ctx.labels(), "-v",
                 f"{root / f'bench-ctr-{run_no}'}:/run/isofeat/notify", IMAGE, "python3", "-c",
                 textwrap.dedent(WRITER), "/run/isofeat/notify", str(count), str(gap)])
            # The container's start is not timed: each stamp is taken inside it.
            container.append(collect(lines, count, count * gap + 60))
            proc.wait(timeout=60)
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        errors = (ctx.scratch / "watch.err").read_text().strip()
        if errors:
            ctx.progress(f"notify: the watcher said: {errors[-500:]}")
    for q, qname in ((0.5, "p50"), (0.95, "p95")):
        base = f"host-written file to watcher output, {qname}"
        ctx.add(m, base, "s", [pct(x, q) for x in host])
        ctx.add(m, f"container-written file to watcher output, {qname}", "s",
                [pct(x, q) for x in container], baseline=base,
                note="target p95 < 100 ms" if qname == "p95" else None)
    seen = sum(len(x) for x in container)
    ctx.add(m, "notifications seen / sent (container)", "ratio",
            [seen / (count * ctx.runs)])


"""Load (issue 11, item 7): hundreds of concurrent connections through one proxy.

300 connections at once from the sandbox's position (a client that shares only an internal
network with the proxy), half to an allowed origin and half to a denied name on the same
origin, all released together by a barrier, against the proxy's default MaxClients of 100.
Counted: denied requests that got through (must be 0), allowed ones served or refused
cleanly (reset or closed without an answer, or a proxy error page; never a wrong answer).
Afterwards the proxy must be healthy and serve again, and a second environment's proxy,
measured before and during the load, must keep answering.

The notification burst (1,000 from one environment) is in tests/unit/test_notify_faults.py.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .conftest import RunningProxy, status_of

CONNECTIONS = 300

# Runs in the client container: one thread per request, all connected first and released
# together. Prints [kind, status or null, origin answered?, error or null] per request.
LOAD_SCRIPT = r"""
import json, socket, sys, threading
requests = json.loads(sys.argv[1])
barrier = threading.Barrier(len(requests), timeout=60)
results = [None] * len(requests)

def one(i, kind, target):
    status = origin = error = None
    data = b""
    sock = None
    try:
        sock = socket.create_connection(("proxy", 8888), timeout=30)
    except OSError as e:
        error = "connect: " + type(e).__name__
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    if sock is not None:
        try:
            sock.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            while len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            error = type(e).__name__
        finally:
            sock.close()
    head = data.split(b"\r\n", 1)[0].split(b" ")
    if len(head) >= 2 and head[0].startswith(b"HTTP/") and head[1].isdigit():
        status = int(head[1])
    origin = b"origin=" in data
    results[i] = [kind, status, origin, error]

threads = [threading.Thread(target=one, args=(i, k, t)) for i, (k, t) in enumerate(requests)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def latencies(proxy: RunningProxy, count: int, stop: threading.Event | None = None
              ) -> list[float]:
    """Seconds per denied request (one connection each) through ``proxy``, from the host
    through its published port: a `docker exec` per request would measure Docker, not it."""
    found = []
    for _ in range(count):
        if stop is not None and stop.is_set():
            break
        time.sleep(0.05)
        started = time.monotonic()
        try:
            answer = proxy._raw_from_host(proxy.http_request("http://denied.test/latency"))
        except OSError:
            answer = b""
        status = status_of(answer)
        found.append(time.monotonic() - started if status == 403 else float("inf"))
    return found


def wait_healthy(proxy: RunningProxy, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    health = ""
    while time.monotonic() < deadline:
        proxy.container.reload()
        health = proxy.container.attrs["State"].get("Health", {}).get("Status", "none")
        if health == "healthy":
            break
        time.sleep(0.5)
    return health


def test_hundreds_of_concurrent_connections_through_one_proxy(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
    security_report: Any,
) -> None:
    net = make_network()
    run_container(netkit_image, network=net, aliases=["allowed.test", "denied.test"])
    proxy = start_proxy("allowed.test\n", networks=[net])
    other = start_proxy("allowed.test\n", networks=[net])
    assert "MaxClients 100" in (proxy.out / "tinyproxy.conf").read_text()
    before = latencies(other, 10)

    requests = [("allowed", "http://allowed.test/load") if i % 2 else
                ("denied", "http://denied.test/load") for i in range(CONNECTIONS)]
    during: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=lambda: during.extend(latencies(other, 200, stop)))
    started = time.monotonic()
    sampler.start()
    code, output = proxy.client.exec_run(["python3", "-c", LOAD_SCRIPT, json.dumps(requests)])
    load_s = time.monotonic() - started
    stop.set()
    sampler.join(120)
    assert code == 0, output.decode()[-2000:]
    results = json.loads(output.decode().strip().splitlines()[-1])

    denied = [r for r in results if r[0] == "denied"]
    allowed = [r for r in results if r[0] == "allowed"]
    denied_through = [r for r in denied if r[2] or r[1] not in (403, None)]
    served = [r for r in allowed if r[1] == 200 and r[2]]
    # Refused cleanly: no answer at all (closed, reset, refused), or the proxy's own error
    # page; never an answer that is not from the origin dressed as a success.
    refused = [r for r in allowed if r not in served and (r[1] is None or r[1] >= 400)
               and not r[2]]
    wrong = [r for r in allowed if r not in served and r not in refused]
    health = wait_healthy(proxy)
    after = (proxy.http("http://allowed.test/after"), proxy.http("http://denied.test/after"))
    errors = Counter(r[3] or r[1] for r in results if not (r[1] == 200 and r[2])
                     and r[1] != 403)  # fmt: skip
    other_max = max(during) if during else float("inf")
    print(f"{CONNECTIONS} concurrent in {load_s:.1f} s: denied {len(denied)} "
          f"({len(denied_through)} through, {Counter(r[1] for r in denied)}), allowed "
          f"{len(allowed)}: {len(served)} served, {len(refused)} refused cleanly, "
          f"{len(wrong)} wrong; errors {dict(errors)}; health {health}, after {after}; other "
          f"proxy {statistics.median(before) * 1000:.0f} ms before, "
          f"{statistics.median(during) * 1000 if during else -1:.0f} ms median / "
          f"{other_max * 1000:.0f} ms max during ({len(during)} requests)")
    security_report.load(
        "load: concurrent connections",
        f"{CONNECTIONS} connections at once through one proxy (MaxClients 100), half allowed, "
        "half denied, from the sandbox's position",
        expected="no denied request through; allowed ones served or refused cleanly; healthy "
        "afterwards",
        observed=f"{len(denied_through)} of {len(denied)} denied through; allowed: "
        f"{len(served)} served, {len(refused)} refused cleanly, {len(wrong)} otherwise; "
        f"health {health}, then allowed {after[0]}, denied {after[1]}",
        ok=not denied_through and not wrong and health == "healthy" and after == (200, 403)
        and len(served) > 0,
        tried=CONNECTIONS, failed=len(denied_through) + len(wrong),
        load_s=load_s, served=len(served), refused=len(refused),
    )
    security_report.load(
        "load: concurrent connections",
        "another environment's proxy, asked again and again during that load",
        expected="every request answered (403 for a denied name), in well under 2 s",
        observed=f"{len(during)} requests, median {statistics.median(during) * 1000:.0f} ms, "
        f"max {other_max * 1000:.0f} ms (before: {statistics.median(before) * 1000:.0f} ms)"
        if during else "no request completed",
        ok=bool(during) and other_max < 2.0,
        tried=len(during), failed=sum(x == float("inf") for x in during),
        other_median_ms=statistics.median(during) * 1000 if during else -1,
        other_max_ms=other_max * 1000, other_before_ms=statistics.median(before) * 1000,
    )

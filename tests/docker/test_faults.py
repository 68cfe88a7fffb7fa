"""Faults (issue 11, item 6), each with the recovery measured and recorded in the report.

- The proxy of a real environment (the template baked, brought up with plain Compose) dies:
  its process is SIGKILLed from the host, as a crash or the OOM killer would. Docker's
  ``restart: unless-stopped`` brings it back; nothing passes while it is down. The agent
  probes continuously from ``dev`` (uid 1001), and every probe that started while the proxy
  was down must have failed. ``docker kill`` is measured too: Docker counts it as a manual
  stop, so the proxy stays down (and nothing passes, not even directly to the host) until
  ``docker start``, which brings the same container back without a rebuild.
- A broken whitelist is reloaded into a serving proxy, twice (a filter that tinyproxy
  cannot compile, and a whitelist ``isofeat proxy render`` refuses): the old rules stay and
  requests are served throughout, without a restart.

The DinD engine's fault lives in test_dind.py, which has the engine already up; the notify
watcher's and ``isofeat init``'s are in tests/unit/test_notify_faults.py and
test_init_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from isofeat.cli import main

from .conftest import HOST_ANSWER, Env, RunningProxy
from .test_env_boundaries import host_addresses

AGENT = "1001:2000"
# Runs in `dev` as the agent until /tmp/probe.stop exists: one CONNECT through the proxy to
# the host's server every ~50 ms. Each line: start and end time (epoch seconds), ok or fail.
# A probe gives up after 0.5 s: a connect to a dead container is not refused, it hangs (its
# network namespace is gone), and TCP would retry it into the restarted one a second later.
PROBER = r"""
while [ ! -e /tmp/probe.stop ]; do
  t=$(date +%s.%N)
  if timeout 0.5 bash -c 'exec 3<>/dev/tcp/proxy/8888 &&
       printf "CONNECT host.docker.internal:%s HTTP/1.0\r\n\r\n" "$1" >&3 &&
       head -c 300 <&3' _ "$1" 2>/dev/null | grep -q @ANSWER@; then
    echo "$t $(date +%s.%N) ok"
  else
    echo "$t $(date +%s.%N) fail"
  fi >> /tmp/probe.log
  sleep 0.05
done
""".replace("@ANSWER@", HOST_ANSWER.decode())
# Direct ways out, while the proxy is down: each host address on the server's port, at once.
DIRECT = r"""
for a in $2; do
  ( if timeout 3 bash -c "exec 3<>/dev/tcp/$a/$1 && head -c 20 <&3" 2>/dev/null | grep -q .
    then echo "PASSED $a"; fi ) &
done; wait; echo done
"""


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()  # fmt: skip


def state(container: str) -> dict[str, str]:
    fmt = ("{{.State.Status}}|{{.State.Pid}}|{{.RestartCount}}|{{.State.StartedAt}}|"
           "{{.Image}}|{{.Id}}")  # fmt: skip
    status, pid, restarts, started, image, cid = docker("inspect", "-f", fmt, container).split("|")
    return {"status": status, "pid": pid, "restarts": restarts, "started": started,
            "image": image, "id": cid}  # fmt: skip


def epoch(docker_time: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as epoch seconds."""
    head, _, frac = docker_time.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


class Prober:
    """The agent's continuous probe in `dev`; :meth:`results` reads its log back."""

    def __init__(self, dev: str, port: int) -> None:
        self.dev = dev
        docker("exec", "-u", AGENT, dev, "rm", "-f", "/tmp/probe.log", "/tmp/probe.stop")
        docker("exec", "-d", "-u", AGENT, dev, "bash", "-c", PROBER, "_", str(port))

    def results(self) -> list[tuple[float, float, bool]]:
        """``(started, ended, ok)`` of every probe so far."""
        out = subprocess.run(["docker", "exec", self.dev, "cat", "/tmp/probe.log"],
                             capture_output=True, text=True, check=False).stdout
        found = []
        for line in out.splitlines():
            parts = line.split(" ")
            if len(parts) == 3 and parts[2] in ("ok", "fail"):
                found.append((float(parts[0]), float(parts[1]), parts[2] == "ok"))
        return found

    def while_down(self, down: float, up: float) -> list[bool]:
        """Verdicts of the probes that started after ``down`` and ended before ``up``.

        A probe that started while the proxy was down but ended after it was back may pass:
        its SYN went unanswered and its retry reached the new process (no leak).
        """
        return [ok for start, end, ok in self.results() if start >= down and end < up]

    def wait_ok_after(self, after: float, timeout: float) -> float:
        """When the first successful probe that started after ``after`` got its answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for start, end, ok in self.results():
                if ok and start > after:
                    return end
            time.sleep(0.2)
        pytest.fail(f"no probe got through within {timeout}s after the fault")

    def stop(self) -> None:
        docker("exec", "-u", AGENT, self.dev, "touch", "/tmp/probe.stop")


def test_a_dead_proxy_lets_nothing_through_and_comes_back_without_a_rebuild(
    host_server: int, make_env: Callable[..., Env], security_report: Any
) -> None:
    env = make_env("proxykill", extra_whitelist=f"host.docker.internal:{host_server}")
    dev, proxy = env.container_id("dev"), env.container_id("proxy")
    before = state(proxy)
    prober = Prober(dev, host_server)
    try:
        prober.wait_ok_after(0, timeout=60)  # the path works before the fault

        # 1. The process dies (crash, OOM killer): SIGKILL from the host. Docker restarts it.
        killed = time.time()
        os.kill(int(before["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (now := state(proxy))["restarts"] == before["restarts"] or now["status"] != "running":
            assert time.monotonic() < deadline, f"the proxy did not come back: {now}"
            time.sleep(0.1)
        back = epoch(now["started"])
        served = prober.wait_ok_after(killed, timeout=60)
        during = prober.while_down(killed, back)
        print(f"proxy SIGKILLed: running again after {back - killed:.2f} s, the agent "
              f"served again after {served - killed:.2f} s; {len(during)} probes while down")
        security_report.fault(
            "fault: proxy killed",
            "SIGKILL the proxy's process mid-session (a crash), the agent probing through it",
            expected="restarted by Docker (restart: unless-stopped), same container and image; "
            "no probe that started and ended while it was down gets through",
            observed=f"restart {before['restarts']}->{now['restarts']}, same container "
            f"{now['id'] == before['id']}, same image {now['image'] == before['image']}; "
            f"{sum(during)} of {len(during)} probes while down got through",
            ok=now["id"] == before["id"] and now["image"] == before["image"] and not any(during),
            recovery_s=served - killed, down_s=back - killed, probes_down=len(during),
        )

        # 2. `docker kill`: a manual stop for Docker, so the proxy stays down. Nothing passes,
        # through the proxy or around it, until it is started again (no rebuild).
        before = state(proxy)
        docker("kill", proxy)
        while state(proxy)["status"] == "running":
            time.sleep(0.05)
        # From here it is down: a probe that got in before the kill took effect was served by
        # the live process, and is not counted.
        killed = time.time()
        time.sleep(4)  # several probes, and Docker's chance to restart it (it must not)
        still_down = state(proxy)["status"] != "running"
        targets = " ".join(host_addresses())
        direct = docker("exec", "-u", AGENT, dev, "bash", "-c", DIRECT, "_", str(host_server),
                        targets)  # fmt: skip
        started = time.time()
        docker("start", proxy)
        served = prober.wait_ok_after(started, timeout=60)
        after = state(proxy)
        during = prober.while_down(killed, started)
        print(f"docker kill: down {started - killed:.1f} s ({len(during)} probes, "
              f"{sum(during)} passed; direct: {direct!r}); served {served - started:.2f} s "
              "after docker start")
        security_report.fault(
            "fault: proxy killed",
            "`docker kill` the proxy mid-session, then `docker start` it",
            expected="stays down (a manual stop); no probe and no direct connection to the "
            "host gets through; back without a rebuild after `docker start`",
            observed=f"stayed down {still_down}; {sum(during)} of {len(during)} probes and "
            f"{direct.count('PASSED')} direct attempts got through; same container "
            f"{after['id'] == before['id']} and image {after['image'] == before['image']}",
            ok=still_down and not any(during) and "PASSED" not in direct
            and direct.endswith("done") and after["id"] == before["id"]
            and after["image"] == before["image"],
            recovery_s=served - started,
        )
    finally:
        prober.stop()


def test_a_broken_whitelist_reload_keeps_the_old_rules_and_serves_throughout(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    security_report: Any,
) -> None:
    net = make_network()
    run_container(netkit_image, network=net, aliases=["allowed.test", "denied.test"])
    proxy = start_proxy("allowed.test\n", networks=[net])
    started_at = proxy.container.attrs["State"]["StartedAt"]
    good_filter = (proxy.out / "filter").read_text()
    allowed = RunningProxy.http_request("http://allowed.test/x")
    denied = RunningProxy.http_request("http://denied.test/x")
    answers: list[int | None] = []
    stop = threading.Event()

    def traffic() -> None:
        # The sandbox keeps asking while the host reloads: allowed, denied, in turns.
        while not stop.is_set():
            answers.extend(proxy.statuses([allowed, denied] * 5))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(1)
        # A filter tinyproxy cannot compile, written straight into the render.
        (proxy.out / "filter").write_text("^(unclosed\n")
        t0 = time.monotonic()
        refused_filter = main(["proxy", "reload", "--container", proxy.name])
        filter_s = time.monotonic() - t0
        (proxy.out / "filter").write_text(good_filter)
        # A whitelist the renderer refuses: the render on disk is left as it was.
        broken = tmp_path / "broken.txt"
        broken.write_text("allowed.test\ndenied.test\n^evil(.*\n")
        refused_render = main(["proxy", "render", "--defaults", "none", "--no-global", "-w",
                               str(broken), "--out", str(proxy.out)])  # fmt: skip
        reload_after = main(["proxy", "reload", "--container", proxy.name])
        time.sleep(1)
    finally:
        stop.set()
        worker.join(120)
    err = capsys.readouterr().err
    proxy.container.reload()
    same_process = proxy.container.attrs["State"]["StartedAt"] == started_at
    allowed_answers, denied_answers = answers[0::2], answers[1::2]
    after = (proxy.http("http://allowed.test/"), proxy.http("http://denied.test/"))
    print(f"{len(answers)} requests during the broken reloads: allowed {set(allowed_answers)}, "
          f"denied {set(denied_answers)}; refused reload took {filter_s:.2f} s")
    security_report.fault(
        "fault: broken whitelist reloaded",
        "reload a filter tinyproxy cannot compile, then render a whitelist with a bad line and "
        "reload, while the sandbox keeps sending allowed and denied requests",
        expected="both refused (exit 1, exit 2), the old rules stay, same process, every "
        "allowed request served and every denied one refused throughout",
        observed=f"reload exit {refused_filter}, render exit {refused_render}, reload after "
        f"{reload_after}; {len(answers)} requests: allowed {sorted(set(map(str, allowed_answers)))}"
        f", denied {sorted(set(map(str, denied_answers)))}; after {after}; "
        f"same process {same_process}",
        ok=refused_filter == 1 and "keeps its previous rules" in err and refused_render == 2
        and reload_after == 0 and same_process and after == (200, 403)
        and len(answers) >= 20 and set(allowed_answers) == {200} and set(denied_answers) == {403},
        refused_reload_s=filter_s, requests=len(answers),
    )

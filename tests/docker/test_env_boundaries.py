"""The host and the machine's resources, as the agent sees them (SECURITY-CASES 20 and 21).

- Host exposure: a server on the host bound to 0.0.0.0 answers a container on an ordinary
  ``internal: true`` network, at the gateway and at every other host address (measured first
  here, so the test can fail), and answers nothing on a network with
  ``com.docker.network.bridge.inhibit_ipv4``, which the template's ``sandbox`` network uses.
  ``isofeat doctor``'s host-access check agrees in both cases.
- The template's own environment, brought up with Compose from a baked project: the agent
  reaches nothing on the host, while ``proxy`` still reaches an upstream SOCKS5 proxy that runs
  on the host (the SSH-tunnel case, ``socks5://host.docker.internal:PORT``).
- Resource limits: a memory hog and a fork bomb in one environment, while a second one and
  the host stay responsive.

Every probe runs as the agent (uid 1001, group 2000) inside a container.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import HOST_ANSWER, Env

REPO = Path(__file__).resolve().parents[2]
INHIBIT = {"com.docker.network.bridge.inhibit_ipv4": "true"}
AGENT = "1001:2000"

# Runs in a container as the agent: connects to each address on one port, concurrently.
# Prints {address: what came back}: the first bytes, "refused", or null for silence.
KNOCK = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
port, addresses = int(sys.argv[1]), json.loads(sys.argv[2])
def knock(address):
    try:
        with socket.create_connection((address, port), timeout=3) as s:
            s.settimeout(3)
            return s.recv(64).decode("latin-1") or "connected"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return None
with ThreadPoolExecutor(32) as pool:
    print(json.dumps(dict(zip(addresses, pool.map(knock, addresses)))))
"""
DOCTOR = (
    "import json, sys; sys.path.insert(0, '/isofeat-src');"
    "from isofeat.doctor import check_host_access;"
    "print(json.dumps(check_host_access().as_dict()))"
)


def host_addresses() -> list[str]:
    """Every IPv4 address of this machine but loopback: docker0, the LAN, other bridges."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not a.startswith("127.")]


def knock_from(container: Any, port: int, addresses: list[str]) -> dict[str, str | None]:
    code, out = container.exec_run(["python3", "-c", KNOCK, str(port), json.dumps(addresses)],
                                   user=AGENT)  # fmt: skip
    assert code == 0, out.decode()
    answers: dict[str, str | None] = json.loads(out.decode().strip().splitlines()[-1])
    return answers


def doctor_from(container: Any) -> dict[str, Any]:
    code, out = container.exec_run(["python3", "-c", DOCTOR], user=AGENT)
    assert code == 0, out.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def gateway_of(network: Any) -> str:
    network.reload()
    gateway: str = network.attrs["IPAM"]["Config"][0]["Gateway"]
    return gateway


def agent_container(run_container: Callable[..., Any], image: str, network: Any, **kw: Any) -> Any:
    return run_container(
        image, network=network, command=["sleep", "infinity"], user=AGENT, cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        volumes={str(REPO / "src"): {"bind": "/isofeat-src", "mode": "ro"}}, **kw,
    )  # fmt: skip


def test_an_internal_network_exposes_the_host_and_inhibit_ipv4_closes_it(
    host_server: int,
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
    security_report: Any,
) -> None:
    # What Docker gives by default: the host answers at the gateway and at its other addresses.
    plain = make_network(internal=True)
    exposed = agent_container(run_container, netkit_image, plain)
    targets = [gateway_of(plain), *host_addresses()]
    answers = knock_from(exposed, host_server, targets)
    print(f"plain internal network, host server on port {host_server}: {answers}")
    assert answers[gateway_of(plain)] == HOST_ANSWER.decode(), answers
    assert answers["172.17.0.1"] == HOST_ANSWER.decode(), answers  # docker0, through the gateway
    doctor = doctor_from(exposed)
    assert doctor["ok"] is False and gateway_of(plain) in doctor["detail"], doctor
    assert "inhibit_ipv4" in doctor["detail"]

    # The template's sandbox network: no address on the host, so nothing there answers...
    closed = make_network(internal=True, options=INHIBIT)
    peer = run_container(netkit_image, network=closed, aliases=["proxy"])
    agent = agent_container(run_container, netkit_image, closed)
    targets = [gateway_of(closed), *host_addresses()]
    started = time.monotonic()
    answers = knock_from(agent, host_server, targets)
    print(f"inhibit_ipv4 network: {answers} ({time.monotonic() - started:.1f} s)")
    security_report.many("attack", [
        ("20", f"inhibit_ipv4 network: the host server at {address}", "no answer", answer,
         answer is None) for address, answer in answers.items()])
    doctor = doctor_from(agent)
    assert doctor["ok"] is True, doctor
    # ...while the peer still answers by its name (Docker's DNS works without a host side).
    code, out = agent.exec_run(
        ["python3", "-c", "import urllib.request as u; print(u.urlopen("
         "'http://proxy:80/peer', timeout=5).read().decode())"],
        user=AGENT, environment={"no_proxy": "*"},
    )  # fmt: skip
    assert code == 0 and f"origin={peer.attrs['Config']['Hostname']}" in out.decode(), out


# --------------------------------------------------------------------------- the template


class SocksStub:
    """An upstream SOCKS5 proxy on the host (what `ssh -D 0.0.0.0:PORT` gives): it accepts
    one CONNECT per connection and answers the HTTP request itself, naming itself."""

    def __init__(self) -> None:
        self.server = socket.create_server(("0.0.0.0", 0))
        self.port: int = self.server.getsockname()[1]
        self.requests: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            # An early hang-up of the client is fine: the test asserts on what arrived.
            with conn, contextlib.suppress(OSError, IndexError):
                conn.settimeout(10)
                conn.recv(2 + conn.recv(2)[1])  # greeting: version, methods
                conn.sendall(b"\x05\x00")
                head = conn.recv(4)
                if head[3] == 3:
                    host = conn.recv(conn.recv(1)[0]).decode()
                else:
                    raw = conn.recv(4 if head[3] == 1 else 16)
                    host = socket.inet_ntop(
                        socket.AF_INET if head[3] == 1 else socket.AF_INET6, raw
                    )
                port = int.from_bytes(conn.recv(2), "big")
                self.requests.append((host, port))
                conn.sendall(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                body = b"VIA-HOST-SOCKS " + data.split(b"\r\n", 1)[0]
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.server.close()


def test_the_template_cuts_the_agent_off_the_host_but_not_the_proxy(
    host_server: int, make_env: Callable[..., Env], security_report: Any,
) -> None:
    socks = SocksStub()
    try:
        env = make_env("hostcut", upstream_proxy=f"socks5://host.docker.internal:{socks.port}",
                       extra_whitelist="far.test")
        sandbox = json.loads(subprocess.run(
            ["docker", "network", "inspect", f"{env.name}_sandbox"],
            capture_output=True, text=True, check=True).stdout)[0]  # fmt: skip
        assert sandbox["Internal"] is True and sandbox["Options"] == INHIBIT
        gateway = sandbox["IPAM"]["Config"][0]["Gateway"]

        # As the agent: every host address, the sandbox's gateway, host.docker.internal.
        targets = " ".join([gateway, *host_addresses()])
        probe = env.agent(
            "id -u; getent hosts host.docker.internal && echo RESOLVED-HOST;"
            f" for a in {targets}; do ( out=$(timeout 4 bash -c"
            f" \"exec 3<>/dev/tcp/$a/{host_server} && head -c 20 <&3\" 2>&1);"
            " echo \"$a => $out\" ) & done; wait"
        )
        print(probe.stdout)
        lines = probe.stdout.splitlines()
        assert lines[0] == "1001", probe.stdout + probe.stderr
        assert "RESOLVED-HOST" not in probe.stdout
        assert len([ln for ln in lines if "=>" in ln]) == len(targets.split())
        security_report.attack(
            "20", f"the template's dev, as the agent: {len(targets.split())} host addresses "
            "and the gateway", expected="no answer from any", observed="answered" if
            HOST_ANSWER.decode() in probe.stdout else "no answer",
            ok=HOST_ANSWER.decode() not in probe.stdout, tried=len(targets.split()))
        assert "refused" not in probe.stdout.lower(), probe.stdout  # a refusal is an answer

        # The proxy still reaches an upstream proxy on the host, by host.docker.internal.
        through = env.agent(
            "exec 3<>/dev/tcp/proxy/8888;"
            " printf 'GET http://far.test/tunnel HTTP/1.0\\r\\nHost: far.test\\r\\n\\r\\n' >&3;"
            " timeout 15 cat <&3"
        )
        assert "VIA-HOST-SOCKS GET /tunnel" in through.stdout or (
            "VIA-HOST-SOCKS GET http://far.test/tunnel" in through.stdout
        ), through.stdout + through.stderr
        assert ("far.test", 80) in socks.requests
        # And a denied name still is, with the host upstream configured.
        denied = env.agent(
            "exec 3<>/dev/tcp/proxy/8888;"
            f" printf 'GET http://host.docker.internal:{host_server}/ HTTP/1.0\\r\\n\\r\\n' >&3;"
            " timeout 15 head -n1 <&3"
        )
        assert " 403 " in denied.stdout, denied.stdout
    finally:
        socks.close()


# --------------------------------------------------------------------------- resource limits


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _stats(container_id: str) -> tuple[int, str, str]:
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.PIDs}} {{.CPUPerc}} {{.MemUsage}}",
         container_id], capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split(" ", 2)  # fmt: skip
    return int(out[0]), out[1], out[2].strip()


def test_a_memory_hog_and_a_fork_bomb_stay_in_their_environment(
    make_env: Callable[..., Env], security_report: Any,
) -> None:
    limits = {"pids": 256, "memory": "256m", "cpus": 1}
    noisy = make_env("noisy", limits=limits)
    quiet = make_env("quiet", limits=limits)
    dev = noisy.inspect("dev")["HostConfig"]
    assert (dev["PidsLimit"], dev["Memory"], dev["MemorySwap"], dev["NanoCpus"]) == (
        256, 256 * 2**20, 256 * 2**20, 10**9)

    work = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done"

    def quiet_work() -> None:
        done = quiet.agent(work, timeout=60)
        assert done.returncode == 0 and "done" in done.stdout, done.stderr

    def host_work() -> None:
        subprocess.run(["bash", "-c", work], check=True, capture_output=True, timeout=60)

    idle = [_timed(quiet_work) for _ in range(3)]
    host_idle = [_timed(host_work) for _ in range(3)]

    # A memory hog: `tail` buffers an endless line. The kernel kills it at the limit.
    started = time.monotonic()
    hog = noisy.agent("tail /dev/zero", timeout=120)
    hog_seconds = time.monotonic() - started
    assert hog.returncode == 137, (hog.returncode, hog.stderr)
    assert noisy.inspect("dev")["State"]["Running"] is True

    # A fork bomb, as the agent, left running while the other environment and the host work.
    noisy.compose("exec", "-d", "-T", "dev", "bash", "-c", ":(){ :|:& };:")
    time.sleep(5)
    pids, cpu, memory = _stats(noisy.container_id("dev"))
    busy = [_timed(quiet_work) for _ in range(3)]
    host_busy = [_timed(host_work) for _ in range(3)]
    fork_on_host = subprocess.run(["true"], check=False).returncode
    pids_after, cpu_after, _ = _stats(noisy.container_id("dev"))
    print(
        f"memory hog killed after {hog_seconds:.1f} s (exit 137); fork bomb: {pids} then "
        f"{pids_after} pids of {limits['pids']}, CPU {cpu} then {cpu_after}, memory {memory}; "
        f"other environment: {statistics.median(idle):.2f} s idle, "
        f"{statistics.median(busy):.2f} s during the bomb; host: "
        f"{statistics.median(host_idle):.2f} s idle, {statistics.median(host_busy):.2f} s during"
    )
    security_report.many("load", [
        ("21", "a memory hog (tail /dev/zero) under a 256 MiB limit", "killed at the limit "
         "(137), the container keeps running", f"exit {hog.returncode} after "
         f"{hog_seconds:.1f} s", hog.returncode == 137),
        ("21", "a fork bomb as the agent under pids 256", "held at the limit (and it ran)",
         f"{pids} then {pids_after} processes", 200 <= pids <= 256 and pids_after <= 256),
        ("21", "the other environment during the bomb", "still responsive (< 5x idle)",
         f"{statistics.median(idle):.2f} s idle, {statistics.median(busy):.2f} s busy",
         statistics.median(busy) < max(5 * statistics.median(idle), 5.0)),
    ])
    assert pids <= 256 and pids_after <= 256
    assert pids >= 200, f"the bomb did not run ({pids} pids)"
    assert float(cpu.rstrip("%")) <= 130 and float(cpu_after.rstrip("%")) <= 130
    assert fork_on_host == 0
    # Responsive: still done in seconds, not starved (generous: the machine is shared).
    assert statistics.median(busy) < max(5 * statistics.median(idle), 5.0), (idle, busy)
    assert statistics.median(host_busy) < max(5 * statistics.median(host_idle), 2.0)
    noisy.compose("kill", "dev", check=False)


# --------------------------------------------------------------------------- root's PATH


def test_a_folder_on_roots_path_that_the_agent_can_write_is_caught(
    make_network: Callable[..., Any], run_container: Callable[..., Any], netkit_image: str
) -> None:
    prefix = "/usr/local/share/npm-global"
    path = f"{prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # No no-new-privileges here: with it, `docker exec -u root` gets no capabilities and the
    # set-up below (chown to group 2000) fails. The agent's processes (uid 1001) get none.
    box = run_container(
        netkit_image, network=make_network(internal=True), command=["sleep", "infinity"],
        user=AGENT, environment={"PATH": path},
        volumes={str(REPO / "src"): {"bind": "/isofeat-src", "mode": "ro"}},
    )  # fmt: skip
    check = (
        "import json, sys; sys.path.insert(0, '/isofeat-src');"
        "from isofeat.doctor import check_root_path; print(json.dumps(check_root_path().as_dict()))"
    )

    def doctor_root_path() -> dict[str, Any]:
        code, out = box.exec_run(["python3", "-c", check], user=AGENT)
        assert code == 0, out.decode()
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def plant() -> int:
        code, _ = box.exec_run(
            ["bash", "-c", f"printf '#!/bin/sh\\necho PLANTED-BY-AGENT\\n' > {prefix}/bin/ls"
             f" && chmod +x {prefix}/bin/ls"], user=AGENT,
        )  # fmt: skip
        return int(code)

    # The agents' prefix as ai-agents used to leave it: group dev, setgid, group-writable.
    code, out = box.exec_run(
        ["bash", "-c", f"install -d -o root -g 2000 -m 2775 {prefix} {prefix}/bin"], user="root"
    )
    assert code == 0, out.decode()
    before = doctor_root_path()
    assert before["ok"] is False and f"{prefix}/bin: writable (mode 2775)" in before["detail"]
    # What that allows: the agent plants `ls`, and root's next `ls` runs the agent's code.
    assert plant() == 0
    assert box.exec_run(["ls", "/"], user="root").output.decode().strip() == "PLANTED-BY-AGENT"

    # As the Feature leaves it now: root's, read-only to everyone else.
    code, out = box.exec_run(
        ["bash", "-c", f"rm -f {prefix}/bin/ls; chown -R root:root {prefix};"
         f" chmod -R go-w,ug-s {prefix}"], user="root",
    )  # fmt: skip
    assert code == 0, out.decode()
    assert plant() != 0
    after = doctor_root_path()
    assert after["ok"] is True, after

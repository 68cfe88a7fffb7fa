"""No DNS query for an outside name leaves the machine from `dev` (SECURITY-CASES 25).

That a lookup fails is not enough: a resolver can forward the query (and with it whatever the
agent encoded in the name) and still answer "no such name". So every case here asks a
recording DNS server, run by this test on the host, whether it saw a unique name:

- Positive control first, so the test can fail: a container on an ordinary network, told to
  use the recorder (``--dns``), looks up a unique name over UDP and TCP; the recorder sees it.
- The sandbox: an environment baked from the template and brought up with Compose, with the
  same ``dns:`` setting on `dev`. As the agent (uid 1001) it looks up unique names through
  Docker's resolver over UDP and TCP, and asks the recorder and the machine's own resolver
  directly. The recorder sees none of them.
- The engine's host-loopback path (CVE-2024-29018): engines before 26.0.0, 25.0.5 and 23.0.11
  forward queries of containers on internal networks from the *host's* namespace when the
  host's resolv.conf names a loopback resolver. That path is taken only when the container has
  no DNS setting of its own; the template always gives `dev` one (``dns_opt``). Measured here:
  a container with an explicit loopback ``--dns`` never reaches a recorder on the host's
  loopback. ``isofeat doctor``'s ``engine-dns`` check reports the engine here.
- The template as it is (no ``dns:``: the engine forwards to the machine's own resolver): a
  packet sniffer on the host watches every interface for the unique name. From an ordinary
  network the query leaves through the machine's outward interface (control); from `dev`,
  nothing carrying the name leaves.
- The proxy resolves allowed names (by design): a unique allowed name reaches the recorder,
  a denied one, sent by CONNECT and by plain HTTP, does not. tinyproxy filters before it
  resolves.

The recorder binds port 53 on the docker0 address (containers on ordinary networks reach it
through their gateway; `dev`'s network has no address on the host) and on a loopback address
of its own.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Env
from .test_env_boundaries import REPO

AGENT = "1001:2000"
ZONE = "isofeat-dns-probe.test"

# Runs in a container: one DNS query for argv[2] over TCP to argv[1]:53, printed answer rcode
# or the error. The resolver library has no switch for TCP; this is what `dig +tcp` does.
TCP_QUERY = r"""
import socket, sys
server, name = sys.argv[1], sys.argv[2]
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
try:
    with socket.create_connection((server, 53), timeout=3) as s:
        s.sendall(len(q).to_bytes(2, "big") + q)
        answer = s.recv(4096)
    print("answer rcode", answer[5] & 15 if len(answer) > 5 else "short")
except OSError as err:
    print("no answer:", type(err).__name__, err)
"""
# The same over UDP, straight to a server (not through the resolver library).
UDP_QUERY = r"""
import socket, sys
server, name = sys.argv[1], sys.argv[2]
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
try:
    s.sendto(q, (server, 53))
    print("answer rcode", s.recv(4096)[3] & 15)
except OSError as err:
    print("no answer:", type(err).__name__, err)
"""


def query_name(packet: bytes) -> str:
    """The first question's name of a DNS message (no compression in a question)."""
    labels, i = [], 12
    while i < len(packet) and packet[i]:
        labels.append(packet[i + 1 : i + 1 + packet[i]].decode("ascii", "replace"))
        i += 1 + packet[i]
    return ".".join(labels).lower()


def nxdomain(query: bytes) -> bytes:
    """An NXDOMAIN answer to ``query``: the resolver then stops at once."""
    return query[:2] + b"\x81\x83" + query[4:6] + b"\0\0\0\0\0\0" + query[12:]


class Recorder:
    """A DNS server that logs every query name it gets, over UDP and TCP, and answers NXDOMAIN."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[tuple[str, str, str]] = []  # (transport, peer, name)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, 53))
        self.tcp = socket.create_server((address, 53))
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    def _serve_udp(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            self.seen.append(("udp", peer[0], query_name(data)))
            with contextlib.suppress(OSError):
                self.udp.sendto(nxdomain(data), peer)

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(3)
                data = conn.recv(4096)
                self.seen.append(("tcp", peer[0], query_name(data[2:])))
                answer = nxdomain(data[2:])
                conn.sendall(len(answer).to_bytes(2, "big") + answer)

    def saw(self, name: str) -> list[str]:
        return [f"{t} from {p}" for t, p, n in self.seen if n == name.lower()]

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def unique(label: str) -> str:
    """``<first label>-<12 hex>.<rest>.<zone>``: a name no one else ever looks up."""
    first, _, rest = label.partition(".")
    return ".".join(p for p in (f"{first}-{uuid.uuid4().hex[:12]}", rest, ZONE) if p)


def docker0_address() -> str:
    out = subprocess.run(["docker", "network", "inspect", "bridge", "--format",
                          "{{(index .IPAM.Config 0).Gateway}}"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return out or "172.17.0.1"


@pytest.fixture(scope="module")
def recorder(docker_client: Any) -> Iterator[Recorder]:
    rec = Recorder(docker0_address())
    yield rec
    rec.close()


@pytest.fixture
def loopback_recorder() -> Iterator[Recorder]:
    # A loopback address no one else uses: the whole of 127.0.0.0/8 is the host's loopback.
    rec = Recorder(f"127.{uuid.uuid4().int % 200 + 20}.53.{uuid.uuid4().int % 250 + 1}")
    yield rec
    rec.close()


def lookups(run: Callable[[list[str]], str], server: str, label: str) -> dict[str, str]:
    """Look up four unique names from inside a container: libc (getent, UDP), a TCP query to
    Docker's resolver, and UDP and TCP queries straight to ``server``. {name: output}."""
    names = {
        "getent": unique(f"{label}-getent"),
        "tcp-resolver": unique(f"{label}-tcp"),
        "udp-direct": unique(f"{label}-direct"),
        "tcp-direct": unique(f"{label}-tcpdirect"),
    }
    out = {
        names["getent"]: run(["getent", "ahostsv4", names["getent"]]),
        names["tcp-resolver"]: run(["python3", "-c", TCP_QUERY, "127.0.0.11",
                                    names["tcp-resolver"]]),
        names["udp-direct"]: run(["python3", "-c", UDP_QUERY, server, names["udp-direct"]]),
        names["tcp-direct"]: run(["python3", "-c", TCP_QUERY, server, names["tcp-direct"]]),
    }
    for name, output in out.items():  # each query really ran (python3 is there, and so on)
        assert name == names["getent"] or output.startswith(("answer", "no answer")), output
    return out


def test_the_recorder_sees_lookups_from_an_ordinary_network(
    recorder: Recorder, make_network: Callable[..., Any], run_container: Callable[..., Any],
    netkit_image: str,
) -> None:
    """Positive control: the same lookups the sandbox makes, from a network with a way out."""
    box = run_container(netkit_image, network=make_network(), command=["sleep", "infinity"],
                        user=AGENT, dns=[recorder.address],
                        dns_opt=["timeout:1", "attempts:1"])  # fmt: skip

    def run(argv: list[str]) -> str:
        return str(box.exec_run(argv, user=AGENT).output.decode())

    answers = lookups(run, recorder.address, "control")
    for name, output in answers.items():
        assert recorder.saw(name), (name, output, recorder.seen)
    print(f"control: {[(n, recorder.saw(n)) for n in answers]}")


class DnsEnv(Env):
    """A baked environment brought up with compose.yaml plus an override: `dev` runs the
    netkit image (the base image plus python3, for the queries), and optionally `dev` and
    `proxy` use the recorder as their DNS server (the engine's resolver forwards to it).
    Everything else (user, network, capabilities, DNS options) is the template's."""

    def __init__(self, project: Path, override: Path) -> None:
        super().__init__(project)
        self.override = override

    def compose(self, *args: str, check: bool = True, timeout: float = 180,
                input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker", "compose", "-f", str(self.compose_file),
                               "-f", str(self.override), *args], input=input,
                              capture_output=True, check=False, timeout=timeout)  # fmt: skip
        out = subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"))  # fmt: skip
        if check:
            assert out.returncode == 0, f"compose {args}: {out.stderr[-3000:]}"
        return out

    def run(self, argv: list[str]) -> str:
        """``argv`` in `dev` as its configured user (the agent); stdout and stderr."""
        done = self.compose("exec", "-T", "dev", *argv, check=False, timeout=60)
        out = (done.stdout + done.stderr).strip()
        assert "not found" not in out and "No such file" not in out, (argv, out)
        return out


@pytest.fixture
def make_dns_env(
    isolated_home: Path, tmp_path: Path, base_image: str, proxy_image: str, netkit_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., DnsEnv]]:
    from cookiecutter.main import cookiecutter

    from isofeat.cli import main

    monkeypatch.delenv("COOKIECUTTER_CONFIG", raising=False)
    made: list[DnsEnv] = []

    def make(name: str, dns: str | None = None) -> DnsEnv:
        project = tmp_path / name
        project.mkdir()
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        cookiecutter(str(REPO / "templates" / "isofeat"), no_input=True,
                     output_dir=str(project),
                     extra_context={"agents": "none", "extra_whitelist": f"*.allowed.{ZONE}"})
        assert main(["init", "--quiet", str(project)]) == 0
        override = project / ".devcontainer" / "compose.dns-test.yaml"
        text = f"services:\n  dev:\n    image: {netkit_image}\n"
        if dns is not None:
            text += f"    dns: [{dns}]\n  proxy:\n    dns: [{dns}]\n"
        override.write_text(text)
        env = DnsEnv(project, override)
        made.append(env)
        env.compose("up", "-d", "--wait", "--wait-timeout", "90")
        return env

    yield make
    for env in made:
        env.compose("down", "-v", "-t", "1", check=False)


@pytest.fixture
def dns_env(recorder: Recorder, make_dns_env: Callable[..., DnsEnv]) -> DnsEnv:
    return make_dns_env("dnsprobe", dns=recorder.address)


def test_no_query_leaves_the_sandbox_network(
    recorder: Recorder, dns_env: DnsEnv, security_report: Any,
) -> None:
    dev = dns_env.inspect("dev")
    assert dev["HostConfig"]["Dns"] == [recorder.address]
    assert dev["Config"]["User"] == AGENT

    run = dns_env.run
    assert run(["id", "-u"]) == "1001"
    host_resolver = next((line.split()[1] for line in Path("/etc/resolv.conf").read_text()
                          .splitlines() if line.startswith("nameserver")), recorder.address)
    answers = lookups(run, recorder.address, "sandbox")
    # The machine's own resolver, asked directly: a query that reached it would leave.
    direct = unique("sandbox-hostresolver")
    answers[direct] = run(["python3", "-c", UDP_QUERY, host_resolver, direct])
    assert answers[direct].startswith(("answer", "no answer")), answers[direct]
    how = ["getent ahostsv4 (libc, UDP, Docker's resolver)", "TCP to Docker's resolver",
           f"UDP straight to the recorder {recorder.address}",
           f"TCP straight to the recorder {recorder.address}",
           f"UDP straight to the machine's resolver {host_resolver}"]
    for (name, output), attempt in zip(answers.items(), how, strict=True):
        saw = recorder.saw(name)
        # The machine's resolver is not the recorder: there, no answer is the proof (the
        # sniffer test below watches the wire for the template's own DNS path).
        outside = name == direct
        security_report.attack(
            "25", f"from dev as uid 1001, look up a unique name: {attempt}",
            expected="no answer from outside" if outside else "no query reaches the recorder",
            observed=f"recorder saw {saw or 'nothing'}; in dev: {output[-120:] or 'no output'}",
            ok=not saw and (not outside or output.startswith("no answer")),
        )
    # Docker's resolver still answers the environment's own names.
    assert "proxy" in run(["getent", "hosts", "proxy"])


def test_the_proxy_looks_up_allowed_names_only(
    recorder: Recorder, dns_env: DnsEnv, security_report: Any,
) -> None:
    def ask(request: str) -> str:
        script = ("exec 3<>/dev/tcp/proxy/8888; printf '%b' \"$1\" >&3;"
                  " timeout 10 head -n1 <&3")  # fmt: skip
        done = dns_env.compose("exec", "-T", "dev", "bash", "-c", script, "ask", request,
                               check=False, timeout=60)
        return done.stdout.strip()

    allowed = unique("proxy.allowed")  # matches *.allowed.<zone> in the whitelist
    status = ask(f"CONNECT {allowed}:443 HTTP/1.1\\r\\nHost: {allowed}:443\\r\\n\\r\\n")
    # Positive control: the proxy does resolve an allowed name, through the recorder.
    assert recorder.saw(allowed), (status, recorder.seen)
    denied_connect = unique("proxy-denied-connect")
    connect = ask(f"CONNECT {denied_connect}:443 HTTP/1.1\\r\\nHost: {denied_connect}\\r\\n\\r\\n")
    denied_http = unique("proxy-denied-http")
    http = ask(f"GET http://{denied_http}/ HTTP/1.1\\r\\nHost: {denied_http}\\r\\n\\r\\n")
    for name, answer, how in ((denied_connect, connect, "CONNECT"), (denied_http, http, "GET")):
        saw = recorder.saw(name)
        security_report.attack(
            "25", f"{how} a denied unique name through the proxy",
            expected="403 and no query reaches the recorder",
            observed=f"{answer[:60]}; recorder saw {saw or 'nothing'}",
            ok=" 403 " in answer and not saw,
        )
    print(f"allowed {allowed}: {status}; recorder saw {recorder.saw(allowed)}")


ETH_P_ALL = 0x0003
#: Interfaces that stay inside the machine: loopback and the engine's bridges and veths.
INSIDE = ("lo", "docker", "br-", "veth")


class Sniffer:
    """Every packet on every interface of the host's namespace that carries one of the
    watched labels: ``{label: [interface, ...]}``. Needs root (CAP_NET_RAW)."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))  # fmt: skip
        except PermissionError:
            pytest.fail("the packet sniffer needs root (CAP_NET_RAW); run the docker tests as "
                        "root, as CI does", pytrace=False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.settimeout(0.5)
        self.watch: dict[bytes, list[str]] = {}
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data, address = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for label, seen in list(self.watch.items()):
                if label in data:
                    seen.append(str(address[0]))

    def label(self, text: str) -> str:
        self.watch[text.encode()] = []
        return text

    def left(self, text: str) -> list[str]:
        """The interfaces outside the machine's containers that carried ``text``."""
        return sorted({i for i in self.watch[text.encode()] if not i.startswith(INSIDE)})

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()


def test_no_query_leaves_the_machine_from_the_template_as_it_is(
    make_dns_env: Callable[..., DnsEnv], make_network: Callable[..., Any],
    run_container: Callable[..., Any], netkit_image: str, security_report: Any,
) -> None:
    sniffer = Sniffer()
    try:
        # Control: the same lookup from an ordinary network leaves through the outward
        # interface, towards the machine's resolver.
        control = sniffer.label(f"sniff-control-{uuid.uuid4().hex[:12]}")
        box = run_container(netkit_image, network=make_network(), user=AGENT,
                            command=["getent", "ahostsv4", f"{control}.{ZONE}"],
                            dns_opt=["timeout:1", "attempts:1"])  # fmt: skip
        box.wait(timeout=30)
        time.sleep(0.5)
        assert sniffer.left(control), (control, sniffer.watch[control.encode()])

        env = make_dns_env("dnsasis")
        assert not env.inspect("dev")["HostConfig"]["Dns"]  # the template's own DNS setup
        labels = [sniffer.label(f"sniff-dev-{how}-{uuid.uuid4().hex[:12]}")
                  for how in ("getent", "tcp")]  # fmt: skip
        env.run(["getent", "ahostsv4", f"{labels[0]}.{ZONE}"])
        tcp = env.run(["python3", "-c", TCP_QUERY, "127.0.0.11", f"{labels[1]}.{ZONE}"])
        assert tcp.startswith(("answer", "no answer")), tcp
        time.sleep(1)
        for label, how in zip(labels, ("libc lookup (UDP)", "TCP to Docker's resolver"),
                              strict=True):
            left = sniffer.left(label)
            security_report.attack(
                "25", f"from dev (the template as it is, the machine's resolver), {how} of a "
                "unique name", expected="no packet carrying the name leaves the machine",
                observed=f"left on {left or 'no interface'} (control left on "
                f"{sniffer.left(control)})", ok=not left,
            )
    finally:
        sniffer.close()


def test_an_explicit_dns_server_is_not_asked_from_the_hosts_namespace(
    loopback_recorder: Recorder, make_network: Callable[..., Any],
    run_container: Callable[..., Any], netkit_image: str, security_report: Any,
) -> None:
    """The CVE-2024-29018 path: the engine forwards from the host's namespace only for a
    loopback resolver taken from the host's resolv.conf, never for the container's own DNS
    settings (the template sets ``dns_opt``). A loopback ``--dns`` stays in the container."""
    name = unique("loopback")
    # The recorder works from the host itself (control).
    probe = subprocess.run(["python3", "-c", UDP_QUERY, loopback_recorder.address,
                            unique("host-control")], capture_output=True, text=True, check=True)
    assert "answer rcode 3" in probe.stdout, probe
    for internal in (False, True):
        box = run_container(
            netkit_image, network=make_network(internal=internal), user=AGENT,
            command=["getent", "ahostsv4", f"{'int' if internal else 'ord'}-{name}"],
            dns=[loopback_recorder.address], dns_opt=["timeout:1", "attempts:1"],
        )
        box.wait(timeout=30)
    saw = [s for s in loopback_recorder.seen if s[2].endswith(name)]
    security_report.attack(
        "25", "a container with a loopback --dns (ordinary and internal network) looks up a "
        "unique name", expected="the engine does not forward it from the host's namespace",
        observed=f"recorder on the host's {loopback_recorder.address} saw {saw or 'nothing'}",
        ok=not saw,
    )


def test_the_doctor_reports_this_engine(make_dns_env: Callable[..., DnsEnv]) -> None:
    """`isofeat init` records the engine's version in .env; the doctor's engine-dns check, run
    in the template's `dev` as the agent, reads it there and passes on this engine."""
    from isofeat import engine

    env = make_dns_env("enginecheck")
    version = engine.engine_version()
    assert version and env.env["ISOFEAT_ENGINE_VERSION"] == version, env.env
    # The check from this checkout, copied into dev's /tmp (the image has no isofeat).
    pack = subprocess.run(["tar", "-C", str(REPO / "src"), "--exclude", "__pycache__", "-c",
                           "isofeat"], capture_output=True, check=True).stdout  # fmt: skip
    env.compose("exec", "-T", "dev", "tar", "-x", "-C", "/tmp", input=pack, timeout=60)
    out = env.run(["python3", "-c", "import json, sys; sys.path.insert(0, '/tmp');"
                   " from isofeat.doctor import check_engine_dns;"
                   " print(json.dumps(check_engine_dns().as_dict()))"])  # fmt: skip
    result = json.loads(out.splitlines()[-1])
    print(f"engine {version}: {result}")
    assert result["ok"] is True, result
    assert version in result["detail"]
    if engine.has_fix(version) is False:  # as here: Debian's 20.10.24
        assert result["detail"].startswith("NOT FIXED, mitigated"), result

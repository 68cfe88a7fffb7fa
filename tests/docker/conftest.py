"""Fixtures that run the real proxy image, real origin servers and real networks.

Everything created here carries the label ``isofeat.test=<run id>`` and is removed at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from isofeat.cli import main

NETKIT_TAG = "isofeat-test/netkit:2"
HERE = Path(__file__).parent
RUN_ID = uuid.uuid4().hex[:8]
LABELS = {"isofeat.test": RUN_ID}


def status_of(data: bytes) -> int | None:
    """The status code of an HTTP response, or None when there is no status line."""
    first = data.split(b"\r\n", 1)[0].split(b" ")
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        return int(first[1])
    return None


# Runs inside the client container, which shares only an internal network with the proxy (as
# the sandbox does): sends each base64 payload on its own connection to proxy:8888 and prints
# the base64 answers (null when the connection was refused or reset before any answer),
# up to 32 at a time (fewer than the proxy's default MaxClients of 100).
CLIENT_SCRIPT = r"""
import base64, json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def send(item):
    payload = base64.b64decode(item)
    data = b""
    try:
        with socket.create_connection(("proxy", 8888), timeout=10) as s:
            s.sendall(payload)
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if payload.startswith(b"CONNECT") and b"\r\n\r\n" in data:
                    break
    except OSError:
        pass
    return base64.b64encode(data[:8192]).decode() if data else None

# Concurrent, answers in order: an allowed name waits on a DNS lookup that goes nowhere.
with ThreadPoolExecutor(max_workers=32) as pool:
    print(json.dumps(list(pool.map(send, json.loads(sys.argv[1])))))
"""
# Kernel limit on one argv string is 128 KiB; stay well under it per exec.
BATCH_BYTES = 90_000


@dataclass
class RunningProxy:
    container: Any
    port: int
    out: Path
    name: str
    networks: list[str] = field(default_factory=list)
    #: A container on an internal network shared only with the proxy; requests come from it.
    client: Any = None

    def raw_many(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Send each payload on its own connection, from the client container when there is
        one (the sandbox's position), else from the host through the published port."""
        if self.client is None:
            return [self._raw_from_host(p) for p in payloads]
        answers: list[bytes] = []
        batch: list[str] = []
        size = 0
        for payload in [*payloads, None]:
            encoded = base64.b64encode(payload).decode() if payload is not None else ""
            if batch and (payload is None or size + len(encoded) > BATCH_BYTES):
                code, output = self.client.exec_run(
                    ["python3", "-c", CLIENT_SCRIPT, json.dumps(batch)]
                )
                assert code == 0, output.decode()[-2000:]
                answers += [
                    base64.b64decode(a) if a else b""
                    for a in json.loads(output.decode().strip().splitlines()[-1])
                ]
                batch, size = [], 0
            if payload is not None:
                batch.append(encoded)
                size += len(encoded)
        return answers

    def raw(self, payload: bytes) -> bytes:
        return self.raw_many([payload])[0]

    def statuses(self, payloads: Sequence[bytes]) -> list[int | None]:
        return [status_of(a) for a in self.raw_many(payloads)]

    @staticmethod
    def http_request(target: str) -> bytes:
        return f"GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()

    @staticmethod
    def connect_request(target: str) -> bytes:
        return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()

    def _raw_from_host(self, payload: bytes, *, read: int = 65536, timeout: float = 10.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            data = b""
            try:
                while len(data) < read:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break  # tinyproxy closes after an error page; origins speak HTTP/1.0
                    data += chunk
                    if payload.startswith(b"CONNECT") and b"\r\n\r\n" in data:
                        break  # an open tunnel stays open: the head is all we wait for
            except TimeoutError:
                pass
            return data

    def http(self, target: str) -> int | None:
        return status_of(self.raw(self.http_request(target)))

    def connect(self, target: str) -> int | None:
        return status_of(self.raw(self.connect_request(target)))

    def tunnel_get(self, target: str) -> bytes:
        """CONNECT, then send a request through the tunnel; return what the far end answered."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return head
                head += chunk
            if status_of(head) != 200:
                return head
            sock.sendall(b"GET /through-tunnel HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := sock.recv(4096):
                body += chunk
            return body

    def logs(self) -> str:
        data: bytes = self.container.logs(stdout=True, stderr=True)
        return data.decode("utf-8", "replace")


def wait_ready(proxy: RunningProxy, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        proxy.container.reload()
        if proxy.container.status == "exited":
            raise AssertionError(f"proxy exited at start:\n{proxy.logs()}")
        try:
            probe = proxy._raw_from_host(proxy.connect_request("isofeat-ready.invalid:443"))
            if status_of(probe) == 403:
                return
        except OSError as err:
            last = err
        time.sleep(0.2)
    raise AssertionError(f"proxy not ready: {last}\n{proxy.logs()}")


@pytest.fixture(scope="session")
def netkit_image(docker_client: Any, base_image: str) -> str:
    try:
        docker_client.images.get(NETKIT_TAG)
    except Exception:  # docker.errors.ImageNotFound; build below
        docker_client.images.build(
            path=str(HERE / "netkit"),
            tag=NETKIT_TAG,
            buildargs={"BASE_IMAGE": base_image},
            labels=dict(LABELS, **{"isofeat.test": "netkit"}),
            rm=True,
        )
    return NETKIT_TAG


@pytest.fixture
def make_network(docker_client: Any) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(internal: bool = False, options: dict[str, str] | None = None) -> Any:
        net = docker_client.networks.create(
            f"isofeat-test-{RUN_ID}-{uuid.uuid4().hex[:6]}",
            driver="bridge",
            internal=internal,
            labels=LABELS,
            options=options or {},
        )
        made.append(net)
        return net

    yield make
    for net in made:
        try:
            net.reload()
            for c in net.containers:
                net.disconnect(c, force=True)
            net.remove()
        except Exception:  # noqa: S110  # already gone
            pass


@pytest.fixture
def run_container(docker_client: Any) -> Iterator[Callable[..., Any]]:
    started: list[Any] = []

    def run(image: str, *, network: Any = None, aliases: Sequence[str] = (), **kwargs: Any) -> Any:
        name = f"isofeat-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        if network is not None:
            # Created on that network only: it never touches the default bridge.
            kwargs["network"] = network.name
        container = docker_client.containers.create(
            image, name=name, labels=LABELS, detach=True, **kwargs
        )
        started.append(container)
        if network is not None and aliases:
            network.disconnect(container)
            network.connect(container, aliases=list(aliases))
        container.start()
        container.reload()
        return container

    yield run
    for container in started:
        with contextlib.suppress(Exception):  # already gone
            container.remove(force=True)


def render_conf(whitelist: str, folder: Path, *render_args: str) -> Path:
    """Render ``whitelist`` with the real CLI into a fresh folder under ``folder``."""
    token = uuid.uuid4().hex[:6]
    wl = folder / f"wl-{token}.txt"
    wl.write_text(whitelist)
    out = folder / f"proxy-{token}"
    argv = [
        "proxy",
        "render",
        "--defaults",
        "none",
        "--no-global",
        "-w",
        str(wl),
        "--out",
        str(out),
        *render_args,
    ]
    assert main(argv) == 0
    if (out / "tinyproxy.conf").stat().st_mode & 0o004:
        out.chmod(0o755)  # a private render (credentials, --owner) stays 0700
    return out


def proxy_run_options(out: Path) -> dict[str, Any]:
    """How the tests run the proxy image: hardened as in compose.yaml, its port on loopback."""
    return dict(
        volumes={str(out): {"bind": "/etc/isofeat/proxy", "mode": "ro"}},
        ports={"8888/tcp": ("127.0.0.1", None)},
        # Allowed-but-unknown names then fail fast instead of waiting on a resolver.
        dns=["127.0.0.1"],
        dns_opt=["timeout:1", "attempts:1"],
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        tmpfs={"/run": "", "/tmp": ""},
    )


@pytest.fixture
def start_proxy(
    docker_client: Any,
    proxy_image: str,
    tmp_path: Path,
    run_container: Callable[..., Any],
    make_network: Callable[..., Any],
    netkit_image: str,
) -> Callable[..., RunningProxy]:
    """Render a whitelist with the real CLI and run the real proxy image on it, with a client
    container that shares only an ``internal: true`` network with it, as the sandbox does."""

    def start(
        whitelist: str,
        *render_args: str,
        networks: Sequence[Any] = (),
        extra_hosts: dict[str, str] | None = None,
        expect_ready: bool = True,
        with_client: bool = True,
        user: str | None = None,
    ) -> RunningProxy:
        out = render_conf(whitelist, tmp_path, *render_args)
        kwargs = proxy_run_options(out)
        kwargs["extra_hosts"] = extra_hosts or {}
        if user is not None:
            kwargs["user"] = user  # as compose.yaml's ISOFEAT_PROXY_USER
        container = run_container(proxy_image, **kwargs)
        for net in networks:
            net.connect(container)
        container.reload()
        port = int(container.ports["8888/tcp"][0]["HostPort"])
        proxy = RunningProxy(container, port, out, container.name)
        if with_client:
            internal = make_network(internal=True)
            internal.connect(container, aliases=["proxy"])
            proxy.client = run_container(
                netkit_image, network=internal, command=["sleep", "infinity"]
            )
        if expect_ready:
            wait_ready(proxy)
        return proxy

    return start


# --------------------------------------------------------------- a local OCI registry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.x) on loopback; yields ``localhost:PORT``."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.fail(
            "docker-registry is missing: apt-get install docker-registry (scripts/bootstrap does)",
            pytrace=False,
        )
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp_path / "registry.log").open("w")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    problem = (tmp_path / "registry.log").read_text()
                    pytest.fail(f"docker-registry did not start: {problem}", pytrace=False)
                time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


#: What `host_server` answers: a probe that reads it reached the host.
HOST_ANSWER = b"HOST-ANSWERED"


@pytest.fixture
def host_server() -> Iterator[int]:
    """What a developer runs on the host: a server on 0.0.0.0, random port. Yields the port."""
    import threading

    server = socket.create_server(("0.0.0.0", 0))
    port: int = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(HOST_ANSWER)

    threading.Thread(target=serve, daemon=True).start()
    yield port
    server.close()


# --------------------------------------------------------------- the template, with Compose

REPO = HERE.parents[1]


class Env:
    """A project baked from the template, initialised and brought up with Compose."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.compose_file = project / ".devcontainer" / "compose.yaml"
        env = dict(
            line.split("=", 1)
            for line in (project / ".devcontainer" / ".env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        self.env = env
        self.name = env["COMPOSE_PROJECT_NAME"]

    def compose(self, *args: str, check: bool = True, timeout: float = 180
                ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker", "compose", "-f", str(self.compose_file), *args],
                              capture_output=True, text=True, check=False, timeout=timeout)
        if check:
            assert done.returncode == 0, f"compose {args}: {done.stderr[-3000:]}"
        return done

    def agent(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in `dev` as its configured user (the agent)."""
        return self.compose("exec", "-T", "dev", "bash", "-c", script, check=False,
                            timeout=timeout)

    def container_id(self, service: str) -> str:
        out = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.name}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(out) == 1, out
        return out[0]

    def inspect(self, service: str) -> dict[str, Any]:
        out = subprocess.run(["docker", "inspect", self.container_id(service)],
                             capture_output=True, text=True, check=True).stdout
        data: dict[str, Any] = json.loads(out)[0]
        return data


@pytest.fixture
def make_env(
    isolated_home: Path, tmp_path: Path, base_image: str, proxy_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Env]]:
    monkeypatch.delenv("COOKIECUTTER_CONFIG", raising=False)
    made: list[Env] = []

    def make(name: str, limits: dict[str, object] | None = None, **context: str) -> Env:
        project = tmp_path / name
        project.mkdir()
        (project / "README.md").write_text("demo\n")
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        from cookiecutter.main import cookiecutter  # heavy: only for the template tests

        cookiecutter(str(REPO / "templates" / "isofeat"), no_input=True,
                     output_dir=str(project), extra_context={"agents": "none", **context})
        if limits is not None:
            path = project / ".devcontainer" / "isofeat.json"
            settings = json.loads(path.read_text())
            settings["limits"] = limits
            path.write_text(json.dumps(settings))
        assert main(["init", "--quiet", str(project)]) == 0
        env = Env(project)
        made.append(env)
        env.compose("up", "-d", "--wait", "--wait-timeout", "90")
        return env

    yield make
    for env in made:
        env.compose("down", "-v", "-t", "1", check=False)

"""Fixtures that run the real proxy image, real origin servers and real networks.

Everything created here carries the label ``isofeat.test=<run id>`` and is removed at the end.
"""

from __future__ import annotations

import contextlib
import socket
import time
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


@dataclass
class RunningProxy:
    container: Any
    port: int
    out: Path
    name: str
    networks: list[str] = field(default_factory=list)

    def raw(self, payload: bytes, *, read: int = 65536, timeout: float = 10.0) -> bytes:
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

    def http(self, target: str, *, host_header: str | None = None) -> int | None:
        headers = f"Host: {host_header}\r\n" if host_header else ""
        return status_of(
            self.raw(f"GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode())
        )

    def connect(self, target: str) -> int | None:
        return status_of(self.raw(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()))

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
            if proxy.connect("isofeat-ready.invalid:443") == 403:
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

    def make(internal: bool = False) -> Any:
        net = docker_client.networks.create(
            f"isofeat-test-{RUN_ID}-{uuid.uuid4().hex[:6]}",
            driver="bridge",
            internal=internal,
            labels=LABELS,
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


@pytest.fixture
def start_proxy(
    docker_client: Any, proxy_image: str, tmp_path: Path, run_container: Callable[..., Any]
) -> Callable[..., RunningProxy]:
    """Render a whitelist with the real CLI and run the real proxy image on it."""

    def start(
        whitelist: str,
        *render_args: str,
        networks: Sequence[Any] = (),
        extra_hosts: dict[str, str] | None = None,
        expect_ready: bool = True,
    ) -> RunningProxy:
        out = tmp_path / f"proxy-{uuid.uuid4().hex[:6]}"
        wl = tmp_path / f"wl-{uuid.uuid4().hex[:6]}.txt"
        wl.write_text(whitelist)
        code = main(
            [
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
        )
        assert code == 0
        out.chmod(0o755)
        kwargs: dict[str, Any] = dict(
            volumes={str(out): {"bind": "/etc/isofeat/proxy", "mode": "ro"}},
            ports={"8888/tcp": ("127.0.0.1", None)},
            # Allowed-but-unknown names then fail fast instead of waiting on a resolver.
            dns=["127.0.0.1"],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/run": "", "/tmp": ""},
            extra_hosts=extra_hosts or {},
        )
        container = run_container(proxy_image, **kwargs)
        for net in networks:
            net.connect(container)
        container.reload()
        port = int(container.ports["8888/tcp"][0]["HostPort"])
        proxy = RunningProxy(container, port, out, container.name)
        if expect_ready:
            wait_ready(proxy)
        return proxy

    return start

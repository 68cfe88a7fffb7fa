"""The engine's version (CVE-2024-29018): parsing, the fixed releases, the cache, the doctor.

The engine is a fake one here: a unix socket that answers ``GET /version`` like dockerd, so
that the cache can be watched (tests/docker/test_dns.py asks the real one).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from isofeat import doctor, engine
from isofeat.cli import main


@pytest.mark.parametrize(
    ("version", "fixed"),
    [
        ("27.3.1", True),  # Docker Desktop 4.3x
        ("26.0.0", True),
        ("26.0.0-rc1", False),  # a pre-release may predate the fix
        ("26.1.4", True),
        ("25.0.5", True),
        ("25.0.4", False),
        ("25.0.10", True),
        ("24.0.9", False),  # 24.0 never got the fix (end of life)
        ("23.0.11", True),
        ("23.0.10", False),
        ("23.0.15", True),
        ("20.10.24", False),
        ("20.10.24+dfsg1", False),  # Debian bookworm's docker.io: no backport
        ("v27.0.1", True),
        ("28.2.2", True),
        ("100.0.0", True),
    ],
)
def test_which_engine_versions_have_the_fix(version: str, fixed: bool) -> None:
    assert engine.has_fix(version) is fixed


@pytest.mark.parametrize("text", ["", "dev", "latest", "27", "27.x.1", "27.3.1 ; rm -rf"])
def test_an_unreadable_version_is_neither_fixed_nor_not(text: str) -> None:
    assert engine.parse_version(text) is None
    assert engine.has_fix(text) is None


def test_versions_order_as_numbers_not_text() -> None:
    assert engine.parse_version("20.10.24+dfsg1") == (20, 10, 24, False)
    assert engine.parse_version("26.0.0-rc1") == (26, 0, 0, True)
    assert engine.parse_version("25.0.10")[:3] > engine.parse_version("25.0.5")[:3]  # type: ignore[index]  # both parse


class FakeEngine:
    """A unix socket that answers ``GET /version`` with ``version``; counts the requests."""

    def __init__(self, path: Path, version: str) -> None:
        self.path, self.version, self.requests = path, version, 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                self.requests += 1
                body = json.dumps({"Platform": {"Name": "x"}, "Components": [
                    {"Name": "Engine", "Version": "wrong"}], "Version": self.version}).encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)

    def close(self) -> None:
        self.server.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def fake_engine(tmp_path: Path, isolated_home: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEngine]:
    path = tmp_path / "docker.sock"
    fake = FakeEngine(path, "25.0.4")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield fake
    fake.close()


def test_the_version_is_asked_once_and_again_when_the_engine_restarts(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    assert engine.engine_version(os.environ) == "25.0.4"
    assert engine.engine_version(os.environ) == "25.0.4"
    assert fake_engine.requests == 1  # the second open read the cache
    # An upgrade restarts the engine, which makes its socket anew: the cache no longer fits.
    fake_engine.close()
    restarted = FakeEngine(fake_engine.path, "26.1.0")
    try:
        assert engine.engine_version(os.environ) == "26.1.0"
        assert restarted.requests == 1
    finally:
        restarted.close()


def test_no_engine_gives_an_empty_version(tmp_path: Path, isolated_home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    monkeypatch.setenv("PATH", str(tmp_path))  # and no docker CLI to fall back on
    assert engine.engine_version(os.environ) == ""


@pytest.mark.parametrize(
    ("environ", "config", "expected"),
    [
        ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, None,
         "/run/user/1000/docker.sock"),
        ({"DOCKER_HOST": "tcp://10.0.0.5:2376"}, None, None),
        ({"DOCKER_CONTEXT": "desktop-linux"}, None, None),
        ({}, None, engine.DEFAULT_SOCKET),
        ({}, {"currentContext": "desktop-linux"}, None),
        ({}, {"currentContext": "default", "auths": {}}, engine.DEFAULT_SOCKET),
        ({}, {"auths": {}}, engine.DEFAULT_SOCKET),
    ],
)
def test_the_socket_is_the_one_the_docker_cli_would_use(
    tmp_path: Path, environ: dict[str, str], config: dict[str, object] | None,
    expected: str | None,
) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    assert engine.local_socket({"DOCKER_CONFIG": str(tmp_path), **environ}) == expected


def test_init_records_the_engine_version(fake_engine: FakeEngine, tmp_path: Path) -> None:
    from cookiecutter.main import cookiecutter

    project = tmp_path / "p"
    project.mkdir()
    cookiecutter(str(Path(__file__).resolve().parents[2] / "templates" / "isofeat"),
                 no_input=True, output_dir=str(project), extra_context={"agents": "none"})
    assert main(["init", "--quiet", str(project)]) == 0
    env = (project / ".devcontainer" / ".env").read_text()
    assert "ISOFEAT_ENGINE_VERSION=25.0.4\n" in env


# --------------------------------------------------------------------------- the doctor


def _resolv(tmp_path: Path, options: str) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(f"nameserver 127.0.0.11\n{options}\n")
    return str(path)


@pytest.fixture
def no_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOFEAT_WORKSPACE", str(tmp_path / "ws"))


@pytest.mark.usefixtures("no_env_file")
def test_doctor_passes_a_fixed_engine(tmp_path: Path) -> None:
    check = doctor.check_engine_dns({"ISOFEAT_ENGINE_VERSION": "27.3.1"},
                                    _resolv(tmp_path, "options ndots:0"))
    assert check.ok and "has the CVE-2024-29018 fix" in check.detail


@pytest.mark.usefixtures("no_env_file")
def test_doctor_fails_an_old_engine_without_dns_options_of_its_own(tmp_path: Path) -> None:
    check = doctor.check_engine_dns({"ISOFEAT_ENGINE_VERSION": "25.0.4"},
                                    _resolv(tmp_path, "options ndots:0"))
    assert not check.ok
    assert "upgrade Docker Engine (or Docker Desktop) to 26.0.0 or later" in check.detail


@pytest.mark.usefixtures("no_env_file")
def test_doctor_passes_an_old_engine_with_the_templates_dns_options_marked_not_fixed(
    tmp_path: Path,
) -> None:
    check = doctor.check_engine_dns({"ISOFEAT_ENGINE_VERSION": "20.10.24+dfsg1"},
                                    _resolv(tmp_path, "options timeout:1 attempts:1 ndots:0"))
    assert check.ok and check.detail.startswith("NOT FIXED, mitigated")
    assert "upgrade Docker" in check.detail


@pytest.mark.usefixtures("no_env_file")
def test_doctor_fails_when_init_recorded_no_version(tmp_path: Path) -> None:
    check = doctor.check_engine_dns({}, _resolv(tmp_path, "options timeout:1 attempts:1"))
    assert not check.ok and "run `isofeat init`" in check.detail


def test_doctor_reads_the_version_init_wrote_last(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / ".env").write_text("ISOFEAT_ENGINE_VERSION=26.0.0\n")
    monkeypatch.setenv("ISOFEAT_WORKSPACE", str(tmp_path))
    check = doctor.check_engine_dns({"ISOFEAT_ENGINE_VERSION": "20.10.24"},
                                    _resolv(tmp_path, "options ndots:0"))
    assert check.ok and "26.0.0" in check.detail


def test_the_doctor_runs_the_engine_check() -> None:
    assert doctor.check_engine_dns in doctor.CHECKS


def test_the_templates_dns_options_are_the_ones_the_doctor_recognises(tmp_path: Path,
                                                                     isolated_home: Path) -> None:
    """The mitigation on old engines rests on `dev` having DNS options of its own: the doctor
    recognises them by value, so compose.yaml (both Compose files) and the doctor must agree.
    The same bake pins /tmp's tmpfs (tests/docker/test_disk.py measures it)."""
    import yaml
    from cookiecutter.main import cookiecutter

    root = Path(__file__).resolve().parents[2]
    for dind in ("no", "yes"):
        project = tmp_path / f"p-{dind}"
        project.mkdir()
        cookiecutter(str(root / "templates" / "isofeat"), no_input=True, output_dir=str(project),
                     extra_context={"agents": "none", "docker_in_docker": dind})
        for name in ("compose.yaml", "compose.dind.yaml"):
            path = project / ".devcontainer" / name
            if not path.exists():
                continue
            dev = yaml.safe_load(path.read_text())["services"]["dev"]
            assert tuple(dev["dns_opt"]) == doctor.OWN_DNS_OPTIONS, name
        dev = yaml.safe_load((project / ".devcontainer" / "compose.yaml").read_text())
        assert dev["services"]["dev"]["tmpfs"] == ["/tmp:size=1g,exec"]

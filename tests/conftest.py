"""Shared test policy and fixtures.

Docker policy: a test marked ``docker`` (every test under ``tests/docker/`` is marked
automatically) needs a Docker engine. When none answers it is skipped with the reason, except
when ``CI`` or ``ISOFEAT_REQUIRE_DOCKER`` is true: then it FAILS, so that a CI run never
passes green with its container tests silently skipped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRE_DOCKER = "ISOFEAT_REQUIRE_DOCKER"
DOCKER_TESTS = Path(__file__).parent / "docker"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def docker_required() -> bool:
    """True on CI (``CI=true``) or with ``ISOFEAT_REQUIRE_DOCKER=1``."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get(REQUIRE_DOCKER))


@functools.lru_cache(maxsize=1)
def docker_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers (asked once per run)."""
    try:
        from docker.client import from_env

        client = from_env(timeout=10)
        client.ping()
        client.close()
    except Exception as err:  # any failure means "no engine": the SDK, a socket, a timeout
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        return f"no Docker engine answers at {where}: {type(err).__name__}: {err}"
    return None


def _apply_docker_policy() -> None:
    problem = docker_problem()
    if problem is None:
        return
    if docker_required():
        pytest.fail(
            f"{problem}\nDocker tests must run here (CI or {REQUIRE_DOCKER} is set); "
            "start the engine (scripts/bootstrap does) instead of skipping them",
            pytrace=False,
        )
    pytest.skip(f"{problem} (set {REQUIRE_DOCKER}=1 to make this a failure)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if DOCKER_TESTS in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.docker)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("docker") is not None:
        _apply_docker_policy()


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A docker SDK client (``docker.from_env()``); applies the docker policy itself too.

    At the end of the session it removes every environment a test brought up under this
    session's temporary folder, so that a failed test leaves nothing running.
    """
    _apply_docker_policy()
    from docker.client import from_env

    from tests.docker.leftovers import remove_projects_under

    # Image builds and container waits can be quiet for longer than the SDK's 60 s default.
    client = from_env(timeout=600)
    yield client
    remove_projects_under(client, tmp_path_factory.getbasetemp())
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The tag of an up-to-date isofeat base image, built if missing.

    Uses ``$ISOFEAT_EXTRA_CA_CERTS`` like the CLI (else keeps the CAs the image already
    trusts), so it reuses what scripts/bootstrap built instead of rebuilding.
    """
    from isofeat import image_build

    return image_build.ensure("base", client=docker_client)


@pytest.fixture(scope="session")
def proxy_image(docker_client: Any, base_image: str) -> str:
    """The tag of an up-to-date isofeat proxy image (``isofeat/proxy:<version>``)."""
    from isofeat import image_build

    return image_build.ensure("proxy", client=docker_client)


@pytest.fixture(scope="session")
def dind_image(docker_client: Any, base_image: str) -> str:
    """The tag of an up-to-date isofeat Docker-in-Docker image (``isofeat/dind:<version>``)."""
    from isofeat import image_build

    return image_build.ensure("dind", client=docker_client)


@pytest.fixture(scope="session")
def broker_image(docker_client: Any, base_image: str) -> str:
    """The tag of an up-to-date isofeat credential-broker image (``isofeat/broker:<version>``)."""
    from isofeat import image_build

    return image_build.ensure("broker", client=docker_client)


@pytest.fixture(scope="session")
def isofeat_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a wheel of isofeat built from this checkout, once per test run.

    Built the way the template's post_gen hook builds it (pip's isolated PEP 517 build, from a
    copy of the tree): no test depends on a wheel that an earlier run or scripts/test-features
    left in features/src/isofeat/wheels. Give it to a bake with ``ISOFEAT_WHEEL_DIR``.
    """
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    base = tmp_path_factory.mktemp("isofeat-wheel")
    tree, out = base / "tree", base / "wheels"
    tree.mkdir()
    shutil.copy2(repo / "pyproject.toml", tree)
    shutil.copy2(repo / "README.md", tree)
    shutil.copytree(repo / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(tree)],
        capture_output=True, text=True, env=env, check=False,
    )
    wheels = sorted(out.glob("isofeat-*.whl"))
    assert result.returncode == 0 and wheels, result.stdout + result.stderr
    shutil.rmtree(tree)
    return out


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the XDG folders inside tmp_path; the real HOME is never touched.

    DOCKER_CONFIG keeps pointing at the real Docker config folder, so that the Compose v2
    plugin installed by scripts/bootstrap is still found.
    """
    real_docker_config = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("DOCKER_CONFIG", real_docker_config)
    return home


@pytest.fixture
def security_report(request: pytest.FixtureRequest) -> Any:
    """Records this test's attacks, faults, load runs and bad inputs (tests/report.py).

    Each call also asserts its row, so a case that got through fails the test.
    """
    from tests.report import Recorder

    return Recorder(request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests import report

    if report.ENTRIES:
        json_path, md_path = report.write(report.ENTRIES, report.report_dir())
        terminalreporter.write_line(report.summary(report.ENTRIES))
        terminalreporter.write_line(f"security report: {md_path} and {json_path}")

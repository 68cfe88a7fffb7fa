"""``isofeat doctor`` probes what ``isofeat init`` rendered, not a list it derives again.

The user's global whitelist can remove an entry the built-in list allows. The container sees
only the project's whitelist, so the doctor cannot merge the layers itself: init picks an
allowed and a denied HOST:PORT from the merged policy and Compose hands them to `dev`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from isofeat import doctor, envvars
from isofeat.cli import main

# The Dev Container Template's copy: plain YAML, and a test keeps it equal to the generator's.
TEMPLATE_COMPOSE = (
    Path(__file__).resolve().parents[2]
    / "templates" / "devcontainer-template" / "src" / "isofeat" / ".devcontainer" / "compose.yaml"
)


@pytest.fixture
def workspace(tmp_path: Path, isolated_home: Path) -> Path:
    ws = tmp_path / "proj"
    (ws / ".devcontainer").mkdir(parents=True)
    (ws / ".devcontainer" / "whitelist.txt").write_text("extra.example.org\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    return ws


def deny_anthropic_globally(home: Path) -> None:
    glob = envvars.global_whitelist("sandbox", {"HOME": str(home)})
    glob.parent.mkdir(parents=True, exist_ok=True)
    glob.write_text("!api.anthropic.com\n")


def init_env(ws: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["init", str(ws), "--json", "--no-share"]) == 0
    capsys.readouterr()
    lines = (ws / ".devcontainer" / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


class FilterProxy:
    """Answers CONNECT like tinyproxy with the rendered filter: 403 unless a rule matches.

    The rules are the rendered file's anchored EREs; Python's re reads these the same way.
    """

    def __init__(self, filter_file: Path) -> None:
        rules = [ln.split("#", 1)[0].strip() for ln in filter_file.read_text().splitlines()]
        self.rules = [re.compile(r, re.IGNORECASE) for r in rules if r]
        self.asked: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                target = conn.recv(4096).split(b"\r\n", 1)[0].split()[1].decode()
                self.asked.append(target)
                ok = any(rule.search(target) for rule in self.rules)
                conn.sendall(b"HTTP/1.0 200 Connection established\r\n\r\n" if ok else
                             b"HTTP/1.0 403 Filtered\r\n\r\n")


@pytest.fixture
def proxy_for(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[FilterProxy] = []

    def make(filter_file: Path) -> FilterProxy:
        made.append(FilterProxy(filter_file))
        return made[-1]

    yield make
    for p in made:
        p.server.close()


def test_a_globally_denied_default_is_not_the_probe_and_the_doctor_passes(
    workspace: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str], proxy_for: Any
) -> None:
    deny_anthropic_globally(isolated_home)
    env = init_env(workspace, capsys)
    allowed, denied = env["ISOFEAT_PROBE_ALLOWED"], env["ISOFEAT_PROBE_DENIED"]
    assert not allowed.startswith("api.anthropic.com:")
    # The CLI, with the same global file, agrees with both choices.
    assert main(["whitelist", "check", allowed, "-w", str(workspace / ".devcontainer" /
                                                         "whitelist.txt")]) == 0
    assert main(["whitelist", "check", denied]) == 1
    assert main(["whitelist", "check", "api.anthropic.com"]) == 1

    proxy = proxy_for(Path(env["ISOFEAT_PROXY_CONF"].strip("'")) / "filter")
    environ = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
               "ISOFEAT_PROBE_ALLOWED": allowed, "ISOFEAT_PROBE_DENIED": denied}
    allows, denies = doctor.check_allowed_name(environ), doctor.check_denied_name(environ)
    assert allows.ok, allows.detail
    assert denies.ok, denies.detail
    assert sorted(proxy.asked) == sorted([allowed, denied])


def test_the_old_derivation_would_have_probed_the_denied_default(
    workspace: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str], proxy_for: Any
) -> None:
    """The bug this fixes: probing api.anthropic.com through a filter that removed it."""
    deny_anthropic_globally(isolated_home)
    env = init_env(workspace, capsys)
    proxy = proxy_for(Path(env["ISOFEAT_PROXY_CONF"].strip("'")) / "filter")
    environ = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
               "ISOFEAT_PROBE_ALLOWED": "api.anthropic.com:443"}
    assert not doctor.check_allowed_name(environ).ok


def test_without_the_variable_the_doctor_fails_and_says_how_to_fix_it() -> None:
    check = doctor.check_allowed_name({"HTTPS_PROXY": "http://127.0.0.1:9"})
    assert not check.ok
    assert "ISOFEAT_PROBE_ALLOWED is not set" in check.detail
    assert "isofeat init" in check.detail


@pytest.mark.parametrize("value", ["", "no-port", ":443", "a b:443", "a\x1b:443"])
def test_a_malformed_probe_fails_the_check(value: str) -> None:
    check = doctor.check_allowed_name({"ISOFEAT_PROBE_ALLOWED": value})
    assert not check.ok


def test_the_probes_survive_a_cached_render_and_follow_a_changed_global_list(
    workspace: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = init_env(workspace, capsys)
    assert first["ISOFEAT_PROBE_ALLOWED"].startswith("api.anthropic.com:")
    assert init_env(workspace, capsys) == first  # render skipped, same probes
    deny_anthropic_globally(isolated_home)
    after = init_env(workspace, capsys)
    assert not after["ISOFEAT_PROBE_ALLOWED"].startswith("api.anthropic.com:")


def test_an_empty_policy_gives_an_empty_allowed_probe(
    workspace: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from isofeat.whitelist import builtin_text, parse_text

    items, _ = parse_text(builtin_text("sandbox"), "builtin")
    glob = envvars.global_whitelist("sandbox", {"HOME": str(isolated_home)})
    glob.parent.mkdir(parents=True, exist_ok=True)
    glob.write_text("".join(f"!{item}\n" for item in items))
    (workspace / ".devcontainer" / "whitelist.txt").write_text("")
    env = init_env(workspace, capsys)
    assert env["ISOFEAT_PROBE_ALLOWED"] in ("", "''")
    assert env["ISOFEAT_PROBE_DENIED"] == "isofeat-doctor-denied.invalid:443"
    check = doctor.check_allowed_name({"ISOFEAT_PROBE_ALLOWED": ""})
    assert not check.ok and "allows no host" in check.detail


def test_compose_passes_every_probe_variable_to_dev_and_envvars_lists_them() -> None:
    environment = yaml.safe_load(TEMPLATE_COMPOSE.read_text())["services"]["dev"]["environment"]
    for name in (envvars.ISOFEAT_PROBE_ALLOWED, envvars.ISOFEAT_PROBE_DENIED):
        assert name in envvars.ALL
        assert environment[name] == f"${{{name}?run `isofeat init` first}}"


def test_doctor_json_reports_the_probe_it_used(
    workspace: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str], proxy_for: Any
) -> None:
    env = init_env(workspace, capsys)
    proxy = proxy_for(Path(env["ISOFEAT_PROXY_CONF"].strip("'")) / "filter")
    environ = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
               "ISOFEAT_PROBE_ALLOWED": env["ISOFEAT_PROBE_ALLOWED"]}
    check = doctor.check_allowed_name(environ)
    assert env["ISOFEAT_PROBE_ALLOWED"] in json.dumps(check.as_dict())


def test_after_init_and_a_reload_the_live_env_file_wins_over_the_stale_environment(
    workspace: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str], proxy_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The container's environment is fixed at creation; `isofeat init && isofeat proxy
    reload` changes the filter without one. The doctor reads the read-only .env instead."""
    stale = init_env(workspace, capsys)["ISOFEAT_PROBE_ALLOWED"]
    deny_anthropic_globally(isolated_home)
    env = init_env(workspace, capsys)
    assert env["ISOFEAT_PROBE_ALLOWED"] != stale
    monkeypatch.setenv("ISOFEAT_WORKSPACE", str(workspace))
    proxy = proxy_for(Path(env["ISOFEAT_PROXY_CONF"].strip("'")) / "filter")
    environ = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}", "ISOFEAT_PROBE_ALLOWED": stale}
    check = doctor.check_allowed_name(environ)
    assert check.ok, check.detail
    assert proxy.asked == [env["ISOFEAT_PROBE_ALLOWED"]]

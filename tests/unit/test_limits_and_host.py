"""Resource limits and host access: from the template, through isofeat.json and `isofeat init`,
to the values Compose reads; and the doctor's host-access check on real sockets."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cookiecutter.main import cookiecutter

from isofeat import doctor
from isofeat import settings as project_settings
from isofeat.cli import main

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "isofeat"
COMPOSE = TEMPLATE / "{{cookiecutter.__devcontainer_dir}}" / "compose.yaml"
DIND = REPO / "templates" / "compose-fragments" / "compose.dind.yaml"
ENV_EXAMPLE = TEMPLATE / "{{cookiecutter.__devcontainer_dir}}" / ".env.example"


@pytest.fixture
def baked(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("COOKIECUTTER_CONFIG", raising=False)
    project = tmp_path / "p"
    project.mkdir()
    cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(project))
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    return project


def env_values(project: Path) -> dict[str, str]:
    lines = (project / ".devcontainer" / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def init(project: Path) -> dict[str, str]:
    assert main(["init", "--quiet", "--no-share", str(project)]) == 0
    return env_values(project)


def test_every_copy_of_a_default_limit_agrees() -> None:
    cookie = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    assert cookie["pids_limit"] == str(project_settings.DEFAULT_PIDS_LIMIT)
    assert cookie["mem_limit"] == project_settings.DEFAULT_MEMORY
    assert cookie["cpus"] == project_settings.DEFAULT_CPUS
    for path in (COMPOSE, DIND):
        text = path.read_text()
        assert f"pids_limit: ${{ISOFEAT_PIDS_LIMIT:-{project_settings.DEFAULT_PIDS_LIMIT}}}" in text
        assert f"mem_limit: ${{ISOFEAT_MEM_LIMIT:-{project_settings.DEFAULT_MEMORY}}}" in text
        assert f"memswap_limit: ${{ISOFEAT_MEM_LIMIT:-{project_settings.DEFAULT_MEMORY}}}" in text
        # Compose cannot compute "auto"; its fallback is what auto gives on a 2-CPU machine.
        assert f"cpus: ${{ISOFEAT_CPUS:-{project_settings.resolve_cpus('auto', 2)}}}" in text
    example = ENV_EXAMPLE.read_text()
    assert f"ISOFEAT_PIDS_LIMIT={project_settings.DEFAULT_PIDS_LIMIT}\n" in example
    assert f"ISOFEAT_MEM_LIMIT={project_settings.DEFAULT_MEMORY}\n" in example


def test_template_defaults_reach_env_and_compose(baked: Path) -> None:
    settings = json.loads((baked / ".devcontainer" / "isofeat.json").read_text())
    assert settings["limits"] == {"pids": 2048, "memory": "4g", "cpus": "auto"}
    assert settings["allowHostAccess"] is False
    env = init(baked)
    assert env["ISOFEAT_PIDS_LIMIT"] == "2048"
    assert env["ISOFEAT_MEM_LIMIT"] == "4g"
    assert env["ISOFEAT_CPUS"] == project_settings.resolve_cpus("auto", os.cpu_count())
    assert env["ISOFEAT_ALLOW_HOST_ACCESS"] == "0"
    spec = yaml.safe_load((baked / ".devcontainer" / "compose.yaml").read_text())
    dev, proxy = spec["services"]["dev"], spec["services"]["proxy"]
    assert dev["environment"]["ISOFEAT_ALLOW_HOST_ACCESS"] == "${ISOFEAT_ALLOW_HOST_ACCESS:-0}"
    assert spec["networks"]["sandbox"]["internal"] is True
    assert spec["networks"]["sandbox"]["driver_opts"] == {
        "com.docker.network.bridge.inhibit_ipv4": "true"
    }
    # Only the proxy, on `egress`, is given the host: for an upstream proxy that runs there.
    assert proxy["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert "extra_hosts" not in dev


def test_the_template_takes_limits_as_variables(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COOKIECUTTER_CONFIG", raising=False)
    project = tmp_path / "q"
    project.mkdir()
    cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(project),
                 extra_context={"pids_limit": "512", "mem_limit": "512M", "cpus": "0.5"})
    settings = json.loads((project / ".devcontainer" / "isofeat.json").read_text())
    assert settings["limits"] == {"pids": 512, "memory": "512m", "cpus": 0.5}
    env = init(project)
    assert (env["ISOFEAT_PIDS_LIMIT"], env["ISOFEAT_MEM_LIMIT"], env["ISOFEAT_CPUS"]) == (
        "512", "512m", "0.5")


def test_isofeat_json_limits_and_host_access_reach_env(baked: Path) -> None:
    path = baked / ".devcontainer" / "isofeat.json"
    settings = json.loads(path.read_text())
    settings["allowHostAccess"] = True
    settings["limits"] = {"pids": 300, "memory": "768m", "cpus": 1000}
    path.write_text(json.dumps(settings))
    env = init(baked)
    assert env["ISOFEAT_ALLOW_HOST_ACCESS"] == "1"
    assert (env["ISOFEAT_PIDS_LIMIT"], env["ISOFEAT_MEM_LIMIT"]) == ("300", "768m")
    # Docker refuses more CPUs than the machine has: capped at the host's count.
    assert float(env["ISOFEAT_CPUS"]) == float(os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("cpus", "host", "want"),
    [("auto", 1, "1"), ("auto", 2, "1"), ("auto", 16, "15"), ("auto", None, "1"),
     ("1.5", 4, "1.5"), ("8", 2, "2"), ("0.25", 2, "0.25")],
)  # fmt: skip
def test_cpus_resolve_on_the_host(cpus: str, host: int | None, want: str) -> None:
    assert project_settings.resolve_cpus(cpus, host) == want


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"allowHostAccess": "yes"}, "allowHostAccess must be true or false"),
        ({"limits": []}, "limits must be an object"),
        ({"limits": {"disk": "1g"}}, "unknown limit(s) disk"),
        ({"limits": {"pids": 10}}, "limits.pids must be a whole number"),
        ({"limits": {"pids": True}}, "limits.pids must be a whole number"),
        ({"limits": {"pids": "2048"}}, "limits.pids must be a whole number"),
        ({"limits": {"memory": "4GB"}}, "limits.memory must be like 4g"),
        ({"limits": {"memory": "1m"}}, "limits.memory must be like 4g"),
        ({"limits": {"memory": 4}}, "limits.memory must be like 4g"),
        ({"limits": {"cpus": 0}}, "limits.cpus must be"),
        ({"limits": {"cpus": "all"}}, "limits.cpus must be"),
    ],
)
def test_bad_limits_stop_init_with_exit_2(
    baked: Path, capsys: pytest.CaptureFixture[str], settings: dict[str, object], message: str
) -> None:
    (baked / ".devcontainer" / "isofeat.json").write_text(json.dumps(settings))
    assert main(["init", "--no-share", str(baked)]) == 2
    assert message in capsys.readouterr().err
    assert not (baked / ".devcontainer" / ".env").exists()


# --------------------------------------------------------------------------- doctor: host access


def test_route_gateways_reads_the_routing_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t000013AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
        "eth1\t0000000A\t0100000A\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n"
        "eth0\t00000000\t010013AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert doctor.route_gateways(str(table)) == ["172.19.0.1", "10.0.0.1"]
    assert doctor.route_gateways(str(tmp_path / "missing")) == []


@pytest.fixture
def listener() -> Iterator[int]:
    """A server on 0.0.0.0 as a developer runs one; yields its port."""
    server = socket.create_server(("0.0.0.0", 0))
    port: int = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    server.close()


def test_knock_counts_a_refusal_as_an_answer(listener: int) -> None:
    assert doctor.knock_evidence("127.0.0.1", listener).how == "open"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, not listening: the kernel refuses
        assert doctor.knock_evidence("127.0.0.1", closed).how == "econnrefused"


def test_host_access_fails_when_the_host_answers_and_names_the_fix(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "_host_targets", lambda: (["127.0.0.1"], []))
    monkeypatch.setattr(doctor, "HOST_PORTS", (listener,))
    check = doctor.check_host_access(environ={})
    assert check.ok is False
    assert f"127.0.0.1 (port {listener} open)" in check.detail
    assert "inhibit_ipv4" in check.detail and '"allowHostAccess": true' in check.detail
    accepted = doctor.check_host_access(environ={doctor.ALLOW_HOST_ACCESS: "1"})
    assert accepted.ok is True and accepted.detail.startswith("ACCEPTED by allowHostAccess")


def test_host_access_passes_when_nothing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_host_targets", lambda: (["192.0.2.77"], []))
    monkeypatch.setattr(doctor, "knock_evidence",
                        lambda address, port: doctor.Knock(address, port, None))
    check = doctor.check_host_access(environ={})
    assert check.ok is True and "no answer from the host at 192.0.2.77" in check.detail
    assert "not counted" not in check.detail


def scripted_host(monkeypatch: pytest.MonkeyPatch, rounds: list[set[int]]) -> list[int]:
    """The host at 192.0.2.77 answers "open" on round i's ports, then on none; returns the
    list of rounds knocked (one entry per knock) so a test can count them."""
    monkeypatch.setattr(doctor, "_host_targets", lambda: (["192.0.2.77"], []))
    monkeypatch.setattr(doctor, "HOST_PORTS", (22, 80))
    monkeypatch.setattr(doctor, "CONFIRM_PAUSE", 0)
    knocked: list[int] = []
    lock = threading.Lock()

    def fake(address: str, port: int) -> doctor.Knock:
        with lock:
            this_round = knocked.count(port)
            knocked.append(port)
        if this_round < len(rounds) and port in rounds[this_round]:
            return doctor.Knock(address, port, "open", "peer none (ENOTCONN), state CLOSE")
        return doctor.Knock(address, port, None)

    monkeypatch.setattr(doctor, "knock_evidence", fake)
    return knocked


def test_an_answer_that_does_not_repeat_is_shown_but_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    knocked = scripted_host(monkeypatch, [{22}])
    check = doctor.check_host_access(environ={})
    assert check.ok is True, check.detail
    assert check.detail.startswith("no repeated answer from the host at 192.0.2.77")
    assert "not counted" in check.detail
    assert "192.0.2.77:22 open (peer none (ENOTCONN), state CLOSE)" in check.detail
    assert len(knocked) == 2 * (1 + doctor.CONFIRM_ROUNDS)  # every port, every round


def test_an_answer_repeated_on_any_port_in_a_later_round_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    knocked = scripted_host(monkeypatch, [{22}, set(), {80}])
    check = doctor.check_host_access(environ={})
    assert check.ok is False
    assert "192.0.2.77 (port 22 open), and again when asked once more" in check.detail
    assert "connections: 192.0.2.77:22 open (peer none" in check.detail
    assert len(knocked) == 2 * 3


def test_a_confirmed_answer_stops_asking(monkeypatch: pytest.MonkeyPatch) -> None:
    knocked = scripted_host(monkeypatch, [{22, 80}, {80}])
    check = doctor.check_host_access(environ={})
    assert check.ok is False and "port 22 open, 80 open" in check.detail
    assert len(knocked) == 2 * 2


def test_knock_reports_the_peer_of_a_real_connection(listener: int) -> None:
    k = doctor.knock_evidence("127.0.0.1", listener)
    assert k.how == "open" and k.evidence.startswith(f"peer 127.0.0.1:{listener}, state ")


def test_doctor_runs_the_host_check() -> None:
    assert doctor.check_host_access in doctor.CHECKS
    assert re.search(r"host", " ".join(c.__name__ for c in doctor.CHECKS))


# --------------------------------------------------------------------------- doctor: root's PATH


def _tree(tmp_path: Path) -> Path:
    """A root-owned, read-only-to-others tree below tmp_path (whose parents are the host's)."""
    top = tmp_path / "opt"
    (top / "bin").mkdir(parents=True)
    (top / "lib" / "pkg").mkdir(parents=True)
    (top / "lib" / "pkg" / "cli.js").write_text("// the real program\n")
    (top / "bin" / "tool").symlink_to(top / "lib" / "pkg" / "cli.js")
    for path in (top, top / "bin", top / "lib", top / "lib" / "pkg"):
        path.chmod(0o755)
    return top


def _below(findings: list[str], top: Path) -> list[str]:
    return [f for f in findings if f.startswith(str(top))]


def test_a_clean_path_has_no_findings_below_it(tmp_path: Path) -> None:
    top = _tree(tmp_path)
    assert _below(doctor.path_findings(f"{top}/bin"), top) == []


@pytest.mark.parametrize(
    ("relative", "mode", "gid"),
    [
        ("bin", 0o2775, 2000),  # the agents' old npm prefix: setgid, group dev
        ("bin", 0o777, 0),  # world-writable
        ("lib/pkg", 0o2775, 2000),  # where a program's link leads
        ("lib/pkg/cli.js", 0o664, 2000),  # the program itself
        ("", 0o775, 2000),  # a parent of the folder on the PATH
    ],
)
def test_what_the_agent_could_change_on_root_path_is_found(
    tmp_path: Path, relative: str, mode: int, gid: int
) -> None:
    top = _tree(tmp_path)
    target = top / relative if relative else top
    os.chown(target, 0, gid)
    target.chmod(mode)
    found = _below(doctor.path_findings(f"{top}/bin"), top)
    assert [f.split(":")[0] for f in found] == [str(target)], found


def test_a_folder_the_agent_owns_is_found_and_relative_entries_too(tmp_path: Path) -> None:
    top = _tree(tmp_path)
    os.chown(top / "bin", doctor.EXPECTED_UID, 0)
    found = doctor.path_findings(f"{top}/bin::relative/bin")
    assert f"{top}/bin: owned by uid 1001" in found
    assert "(empty entry): relative: resolves to the current folder" in found
    assert "relative/bin: relative: resolves to the current folder" in found


def test_the_check_reads_pid_1_path_and_fails_naming_the_folder(tmp_path: Path) -> None:
    top = _tree(tmp_path)
    os.chown(top / "bin", 0, 2000)
    (top / "bin").chmod(0o2775)
    environ = tmp_path / "environ"
    environ.write_bytes(b"HOME=/root\0PATH=" + f"{top}/bin:/usr/bin".encode() + b"\0X=1\0")
    assert doctor.container_path(str(environ)) == f"{top}/bin:/usr/bin"
    check = doctor.check_root_path(str(environ))
    assert check.ok is False and f"{top}/bin: writable (gid 2000, mode 2775)" in check.detail
    assert "chmod go-w" in check.detail


def test_a_host_access_failure_names_the_next_hop_that_answered(tmp_path: Path) -> None:
    """The MAC of the neighbour that took the traffic says which interface answered (a
    container's is 02:42 plus its IPv4 address); unresolved entries are left out."""
    from isofeat.doctor import arp_entries

    arp = tmp_path / "arp"
    arp.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "192.168.128.1    0x1         0x2         02:42:c0:a8:80:01     *        eth0\n"
        "192.168.128.2    0x1         0x2         02:42:c0:a8:80:02     *        eth0\n"
        "10.0.0.1         0x1         0x0         00:00:00:00:00:00     *        eth0\n")
    said = arp_entries(["192.168.128.1", "10.0.0.1"], str(arp))
    assert said == ("; next hop 192.168.128.1 is 02:42:c0:a8:80:01"
                    "; other neighbours 192.168.128.2 is 02:42:c0:a8:80:02")
    assert arp_entries(["192.0.2.9"], str(tmp_path / "missing")) == "; no resolved next hop"


def test_a_host_access_failure_lists_the_routes(tmp_path: Path) -> None:
    from isofeat.doctor import route_table

    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00F0FFFF\t0\t0\t0\n")
    assert route_table(str(table)) == (
        "; routes 0.0.0.0/0 via 192.168.0.1 dev eth0, 192.168.0.0/20 dev eth0")
    assert route_table(str(tmp_path / "missing")) == ""

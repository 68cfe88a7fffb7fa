"""Every class of ../shared/SECURITY-CASES.md, against an environment baked from the template.

One project is baked with Docker-in-Docker on and brought up with the real devcontainer CLI,
as a user does. Each attack runs inside `dev` as the agent (uid 1001, through
``devcontainer exec``), or from a container inside the Docker-in-Docker engine for the DinD
cases. agent_probe.py only observes; the expectations live here, one row per attempt, and
every row goes into the security report (tests/report.py).

Where a class has a deeper test elsewhere (the proxy's generated corpus, faults, load, DNS
recording, the git boundary), that test records its own rows; this module still tries each
class once from the real environment, so a template change that opens a hole shows here.
Case 23 (secrets) waits for the secrets broker; case 24 and 25 rows come from test_dns.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isofeat.layout import (
    GIT_OBJECTS_TARGET,
    NO_POINTER_TARGET,
    TRUST_TARGET,
    WORKSPACE_TARGET,
    env_id_for,
    project_name,
)
from isofeat.notify import CONTAINER_NOTIFY_DIR
from isofeat.tasks import remove_environment

from .conftest import HOST_ANSWER, Env
from .test_env_boundaries import host_addresses
from .test_main_job import bake, container_of, host_env, need, up

pytestmark = pytest.mark.docker

PROBE = (Path(__file__).parent / "agent_probe.py").read_text()
ALLOWED = "github.com"  # on the built-in list (src/isofeat/whitelists/sandbox.txt)
LOOKALIKES = ["github.com.attacker.test", "attacker-github.com", "notgithub.com", "githubXcom",
              "github.comX", "xgithub.com", "github.com-attacker.test", "github.com.",
              "sub.github.com.attacker.test", "GITHUB.COM.attacker.test", "github.co",
              "github.com.attacker.test.", "api.github.com.evil.test"]
Row = tuple[str, str, str, object, bool]


@dataclass
class Baked:
    ws: Path
    env: dict[str, str]
    project: str

    def probe(self, plan: list[list[Any]], timeout: float = 300) -> dict[str, Any]:
        """Run agent_probe.py in `dev` as the agent; its observations by probe id."""
        done = subprocess.run(
            [need("devcontainer"), "exec", "--workspace-folder", str(self.ws),
             "python3", "-c", PROBE, json.dumps(plan)],
            capture_output=True, text=True, env=self.env, check=False, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return found

    def container(self, service: str) -> str:
        return container_of(self.project, service)


@pytest.fixture(scope="module")
def baked(
    tmp_path_factory: pytest.TempPathFactory, base_image: str, proxy_image: str,
    dind_image: str, isofeat_wheel_dir: Path,
) -> Iterator[Baked]:
    root = tmp_path_factory.mktemp("security-cases")
    env = host_env(root)
    env["ISOFEAT_WHEEL_DIR"] = str(isofeat_wheel_dir)
    ws = bake(root / "demo", env, docker_in_docker="yes", project_name="security cases")
    project = project_name(env_id_for(ws))
    try:
        up(ws, env)
        yield Baked(ws, env, project)
    finally:
        remove_environment(project, lambda _m: None)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def get(url: str, host: str, extra: str = "") -> str:
    return b64(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())


def connect(target: str, host: str | None = None) -> str:
    return b64(f"CONNECT {target} HTTP/1.1\r\nHost: {host or target}\r\n\r\n".encode())


def refused(answer: object) -> bool:
    """The proxy's application-level refusal: 403, or 400 for a request it cannot parse."""
    return answer in (400, 403)


def no_connection(answer: object) -> bool:
    """A direct connection that did not happen. A refusal is an answer from someone, so it
    does not count; "unreachable" and silence do."""
    return isinstance(answer, str) and not answer.startswith("open") and answer != "refused"


# ------------------------------------------------------------------ cases 1-5: egress policy


def test_egress_policy_cases_1_to_5(baked: Baked, security_report: Any) -> None:
    plan: list[list[Any]] = []
    rows: list[tuple[str, str, str, Callable[[object], bool]]] = []

    def add(case: str, attempt: str, payload: str, expected: str,
            judge: Callable[[object], bool] = refused, is_connect: bool = False) -> None:
        plan.append([f"p{len(plan)}", "proxy", payload, is_connect])
        rows.append((case, attempt, expected, judge))

    # Positive controls first: a test that cannot see "allowed" cannot see "denied" either.
    add("1", f"control: CONNECT {ALLOWED}:443 is let through", connect(f"{ALLOWED}:443"),
        "not 403", lambda a: isinstance(a, int) and a != 403, True)
    add("1", f"control: GET http://{ALLOWED}/ is let through", get(f"http://{ALLOWED}/", ALLOWED),
        "not 403", lambda a: isinstance(a, int) and a != 403)
    for name in LOOKALIKES:
        if name.rstrip(".").lower() == ALLOWED:
            continue  # the same host, spelled the DNS way: not a lookalike
        add("1", f"lookalike over HTTP: {name}", get(f"http://{name}/", name), "403")
        add("1", f"lookalike over CONNECT: {name}:443", connect(f"{name}:443"), "403",
            is_connect=True)
    for ip in ["1.1.1.1", "140.82.112.3", "127.0.0.1", "172.17.0.1", "169.254.169.254",
               "[2606:4700:4700::1111]", "[::1]", "[::ffff:127.0.0.1]", "16843009",
               "0x01010101", "017700000001", "127.1", "0"]:
        add("2", f"raw IP over HTTP: {ip}", get(f"http://{ip}/", ip), "403 or 400")
        add("2", f"raw IP over CONNECT: {ip}:443", connect(f"{ip}:443"), "403 or 400",
            is_connect=True)
    for port in [22, 80, 8443, 6443, 2375, 0, 65535]:
        add("3", f"CONNECT to an allowed host on port {port}", connect(f"{ALLOWED}:{port}"),
            "403 or 400", is_connect=True)
    for port in [22, 443, 8080, 2375, 65535]:
        add("3", f"plain HTTP to an allowed host on port {port}",
            get(f"http://{ALLOWED}:{port}/", f"{ALLOWED}:{port}"), "403 or 400")
    tricks = {
        "userinfo names the allowed host": get(f"http://{ALLOWED}@attacker.test/",
                                               "attacker.test"),
        "userinfo with a port": get(f"http://{ALLOWED}:443@attacker.test/", "attacker.test"),
        "Host header disagrees with the URI": get("http://attacker.test/", ALLOWED),
        "allowed name in the path": get(f"http://attacker.test/{ALLOWED}/", "attacker.test"),
        "allowed name in the query": get(f"http://attacker.test/?h={ALLOWED}", "attacker.test"),
        "allowed name after #": get(f"http://attacker.test/#@{ALLOWED}", "attacker.test"),
        "origin-form request (transparent mode)": get("/", "attacker.test"),
        "origin-form request naming an allowed Host": get("/", ALLOWED),
        "CONNECT with a Host header naming an allowed host": connect("attacker.test:443",
                                                                     f"{ALLOWED}:443"),
        "absolute URI with a backslash": get(f"http://attacker.test\\@{ALLOWED}/",
                                             "attacker.test"),
        "two Host headers": get("http://attacker.test/", "attacker.test",
                                f"Host: {ALLOWED}\r\n"),
        "X-Forwarded-Host naming an allowed host": get("http://attacker.test/", "attacker.test",
                                                       f"X-Forwarded-Host: {ALLOWED}\r\n"),
    }
    for attempt, payload in tricks.items():
        add("4", attempt, payload, "403 or 400", is_connect=payload.startswith("Q09OTk"))
    garbage = {
        "NUL in the host": b"GET http://git\x00hub.com/ HTTP/1.1\r\n\r\n",
        "CR LF injected in the URI": b"GET http://attacker.test/\r\nHost: github.com HTTP/1.1"
                                     b"\r\n\r\n",
        "ESC sequences in the host": b"GET http://\x1b[31mgithub.com/ HTTP/1.1\r\n\r\n",
        "64 KiB host name": b"GET http://" + b"a" * 65536 + b".test/ HTTP/1.1\r\n\r\n",
        "300-label host name": b"CONNECT " + b"a." * 300 + b"test:443 HTTP/1.1\r\n\r\n",
        "tab and space in the host": b"GET http://github.com\t.attacker.test/ HTTP/1.1\r\n\r\n",
        "no method": b"http://github.com/ HTTP/1.1\r\n\r\n",
        "HTTP/0.9 request": b"GET http://attacker.test/\r\n\r\n",
    }
    for attempt, raw in garbage.items():
        add("5", attempt, b64(raw), "a 4xx (or the connection closed without an answer)",
            lambda a: (isinstance(a, int) and 400 <= a < 500) or a == "closed")
    # ...and the proxy keeps serving after all of that (sent last, after the batch above).
    seen = baked.probe(plan)
    after = baked.probe([["after", "proxy", connect("attacker.test:443"), True],
                         ["after-ok", "proxy", connect(f"{ALLOWED}:443"), True]])
    results: list[Row] = [(case, attempt, expected, seen[f"p{i}"], judge(seen[f"p{i}"]))
                          for i, (case, attempt, expected, judge) in enumerate(rows)]
    results.append(("5", "the proxy still denies and allows after the garbage", "403, then "
                    "not 403", f"{after['after']}, {after['after-ok']}",
                    after["after"] == 403 and after["after-ok"] not in (403, "closed")))
    security_report.many("attack", results)


def test_case_6_a_bad_whitelist_line_is_refused_with_file_and_line(
    baked: Baked, security_report: Any, tmp_path: Path,
) -> None:
    rows: list[Row] = []
    for bad in ["*", ".*", "*.*", "git.*hub\\.com", "https://github.com/x", "github.com/x",
                "a..b", ".github.com.", "github.com:99999", "-github.com", "github.com\x1b[2J"]:
        path = tmp_path / "whitelist.txt"
        path.write_text(f"pypi.org\n{bad}\n")
        done = subprocess.run([sys.executable, "-m", "isofeat", "whitelist", "lint", str(path)],
                              capture_output=True, text=True, env=baked.env, check=False)
        said = done.stdout + done.stderr
        ok = done.returncode == 2 and f"{path}:2" in said and "\x1b" not in said
        rows.append(("6", f"whitelist line {bad!r}", f"exit 2 naming {path.name}:2",
                     f"exit {done.returncode}: {said.strip()[:160]}", ok))
    security_report.many("attack", rows)


# ------------------------------------------------------------------ cases 7-12: topology


def nested_image_script() -> str:
    """Shell for `dev`: import a tiny image (bash, timeout, their libraries) into the DinD
    engine; nothing can be pulled here, and the sandbox has no registry access anyway."""
    return r"""
        set -u
        for i in $(seq 1 90); do docker info >/dev/null 2>&1 && break; sleep 1; done
        files="/bin/bash /usr/bin/timeout $(ldd /bin/bash /usr/bin/timeout | grep -o '/[^ ]*' \
            | sort -u)"
        tar -chf /tmp/nested.tar $files 2>/dev/null
        docker import /tmp/nested.tar isofeat-nested:1 >/dev/null && echo imported
    """


def knock(where: str, port: int) -> str:
    """bash's /dev/tcp from a nested container: prints open or closed, per address."""
    return (f"timeout 5 /bin/bash -c 'exec 3<>/dev/tcp/{where}/{port}' 2>/dev/null"
            f" && echo {where}=open || echo {where}=closed")


def test_topology_cases_7_to_12(
    baked: Baked, security_report: Any, host_server: int,
    make_env: Callable[..., Env],
) -> None:
    other = make_env("other-env")  # a second environment, side by side
    other_addresses = [n["IPAddress"] for n in
                       other.inspect("proxy")["NetworkSettings"]["Networks"].values()]
    other_dev = [n["IPAddress"] for n in
                 other.inspect("dev")["NetworkSettings"]["Networks"].values()]
    dind_proxy = [n["IPAddress"] for n in json.loads(subprocess.run(
        ["docker", "inspect", baked.container("docker-proxy")], capture_output=True, text=True,
        check=True).stdout)[0]["NetworkSettings"]["Networks"].values()]  # fmt: skip
    plan: list[list[Any]] = [
        ["curl-noproxy", "sh", f"curl -sS --noproxy '*' --max-time 5 -o /dev/null "
                               f"https://{ALLOWED} 2>/dev/null; echo rc=$?"],
        ["curl-unset", "sh", "env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy "
                             f"curl -sS --max-time 5 -o /dev/null https://{ALLOWED} 2>/dev/null; "
                             "echo rc=$?"],
        ["dns-example", "resolve", "example.com"],
        ["dns-allowed", "resolve", ALLOWED],
        ["dns-anthropic", "resolve", "api.anthropic.com"],
        ["dns-host", "resolve", "host.docker.internal"],
        ["dns-other", "resolve", f"{other.name}-proxy-1"],
        ["dns-dind-proxy", "resolve", "docker-proxy"],
        ["v6-sysctl", "read", "/proc/sys/net/ipv6/conf/all/disable_ipv6"],
        ["v6-addrs", "read", "/proc/net/if_inet6"],
        ["v6-cloudflare", "tcp6", "2606:4700:4700::1111", 443],
        ["v6-loop", "tcp6", "::1", 22],
        ["udp-dns-google", "udp", "8.8.8.8", 53],
        ["udp-dns-docker", "udp", "127.0.0.11", 53],
    ]
    for ip, port in [("1.1.1.1", 443), ("1.1.1.1", 80), ("8.8.8.8", 53), ("140.82.112.3", 443),
                     ("140.82.112.3", 22), ("169.254.169.254", 80)]:
        plan.append([f"direct {ip}:{port}", "tcp", ip, port])
    for ip in dind_proxy:
        plan.append([f"dind-proxy {ip}", "tcp", ip, 8888])
    for ip in other_addresses + other_dev:
        plan.append([f"other {ip}", "tcp", ip, 8888])
    nested = [
        nested_image_script(),
        *(f"docker run --rm {net} isofeat-nested:1 /bin/bash -c "
          f"\"{knock('1.1.1.1', 443)}; {knock('140.82.112.3', 443)}; "
          f"{knock('172.17.0.1', host_server)}\" | sed 's/^/{label}:/'"
          for label, net in [("bridge", ""), ("host", "--network host")]),
    ]
    plan.append(["nested", "sh", "\n".join(nested), 240])
    seen = baked.probe(plan)

    rows: list[Row] = []
    for key in ("curl-noproxy", "curl-unset"):
        code = seen[key]["out"].strip()
        rows.append(("7", f"curl to an allowed host ({key})", "curl exit 6, 7 or 28",
                     code, code in {"rc=6", "rc=7", "rc=28"}))
    for key, value in seen.items():
        if key.startswith("direct "):
            rows.append(("7", f"direct TCP to {key[7:]}", "no connection", value,
                         no_connection(value)))
        elif key.startswith("dns-"):
            rows.append(("8", f"resolve {plan_arg(plan, key)}", "no address", value,
                         isinstance(value, str) and value.startswith("error:")))
        elif key.startswith("dind-proxy "):
            rows.append(("10", f"the DinD proxy at {key[11:]}:8888", "no connection", value,
                         no_connection(value)))
        elif key.startswith("other "):
            rows.append(("12", f"another environment's container at {key[6:]}:8888",
                         "no connection", value, no_connection(value)))
    rows.append(("9", "IPv6 is off (sysctl)", "1", seen["v6-sysctl"].strip(),
                 seen["v6-sysctl"].strip() == "1"))
    rows.append(("9", "IPv6 addresses on any interface", "none",
                 seen["v6-addrs"] or "none", seen["v6-addrs"] in ("", "error:ENOENT")))
    for key in ("v6-cloudflare", "v6-loop"):
        rows.append(("9", f"IPv6 connect {plan_arg(plan, key)}", "no connection", seen[key],
                     no_connection(seen[key])))
    for key in ("udp-dns-google", "udp-dns-docker"):
        rows.append(("8", f"a raw DNS query over UDP to {plan_arg(plan, key)}",
                     "no answer", seen[key], seen[key] != "answered"))
    out = seen["nested"]["out"]
    assert "imported" in out, out
    for label in ("bridge", "host"):
        for ip in ("1.1.1.1", "140.82.112.3", "172.17.0.1"):
            line = f"{label}:{ip}="
            got = next((ln[len(line):] for ln in out.splitlines() if ln.startswith(line)),
                       "missing")
            rows.append(("11" if ip != "172.17.0.1" else "20",
                         f"nested container ({label} network) connects to {ip}",
                         "closed", got, got == "closed"))
    security_report.many("attack", rows)


def plan_arg(plan: list[list[Any]], key: str) -> str:
    return " ".join(str(a) for a in next(p for p in plan if p[0] == key)[2:])


# ------------------------------------------------------------------ cases 13-15: hardening


def test_hardening_cases_13_to_15(baked: Baked, security_report: Any) -> None:
    root_path = baked_root_path(baked)
    writes = ["/etc/isofeat-x", "/usr/isofeat-x", "/usr/local/bin/isofeat-x", "/opt/isofeat-x",
              "/root/isofeat-x", "/var/lib/isofeat-x", "/bin/isofeat-x",
              "/workspace/.devcontainer/isofeat-x", "/workspace/.devcontainer/.env",
              "/workspace/.devcontainer/compose.yaml", "/run/isofeat/git-objects/isofeat-x",
              "/run/isofeat/dind/isofeat-x",
              *(f"{d}/isofeat-x" for d in root_path)]
    plan: list[list[Any]] = [["status", "status"], ["setuid", "setuid"],
                             ["sudo", "sh", "command -v sudo su doas pkexec || true"],
                             ["su", "sh", "su -c id root </dev/null 2>&1; echo rc=$?"],
                             ["dind-id", "sh", "docker info --format '{{.ID}}' 2>&1"],
                             ["docker-sock", "sh", "ls -la /var/run/docker.sock 2>&1; "
                              "ls /run/docker.sock 2>&1"],
                             ["ws", "write", "/workspace/isofeat-x"],
                             ["home", "write", "/home/claude/isofeat-x"]]
    plan += [[f"w:{p}", "write", p] for p in dict.fromkeys(writes)]
    seen = baked.probe(plan)
    st = seen["status"]
    rows: list[Row] = [
        ("13", "the agent's uid and gid", "1001 and 2000", f"{st['Uid']} / {st['Gid']}",
         st["Uid"].split()[0] == "1001" and st["Gid"].split()[0] == "2000"),
        ("13", "effective, permitted and bounding capabilities", "all zero",
         f"Eff={st['CapEff']} Prm={st['CapPrm']} Bnd={st['CapBnd']} Amb={st['CapAmb']}",
         all(int(st[k], 16) == 0 for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb"))),
        ("13", "no-new-privileges", "NoNewPrivs 1", st["NoNewPrivs"], st["NoNewPrivs"] == "1"),
        ("13", "sudo, su, doas, pkexec on the PATH", "none (su without setuid is harmless)",
         seen["sudo"]["out"].strip() or "none",
         all(t not in seen["sudo"]["out"] for t in ("sudo", "doas", "pkexec"))),
        ("13", "su to root", "refused", seen["su"]["out"].strip()[-80:],
         "uid=0" not in seen["su"]["out"]),
        ("13", "setuid or setgid files on the container's filesystem", "none",
         seen["setuid"] or "none", seen["setuid"] == []),
        ("14", "write to the workspace", "writable (control)", seen["ws"],
         seen["ws"] == "writable"),
        ("14", "write to the agent's home", "writable (control)", seen["home"],
         seen["home"] == "writable"),
    ]
    for path in dict.fromkeys(writes):
        rows.append(("14", f"write {path}", "denied", seen[f"w:{path}"],
                     seen[f"w:{path}"].startswith("denied")))
    host_engine = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    rows.append(("15", "the engine the agent's docker CLI reaches", "the DinD engine, not the "
                 "host's", seen["dind-id"]["out"].strip()[:60],
                 host_engine not in seen["dind-id"]["out"]))
    rows.append(("15", "the host's Docker socket", "absent", seen["docker-sock"]["out"][:120],
                 "No such file" in seen["docker-sock"]["out"]))
    # Host files are mounted only where the design names them.
    mounts = {m["Destination"]: m for m in
              json.loads(subprocess.run(["docker", "inspect", baked.container("dev")],
                                        capture_output=True, text=True, check=True).stdout)[0]
              ["Mounts"]}  # fmt: skip
    named = {WORKSPACE_TARGET, f"{WORKSPACE_TARGET}/.devcontainer", f"{WORKSPACE_TARGET}/.git",
             GIT_OBJECTS_TARGET, NO_POINTER_TARGET, CONTAINER_NOTIFY_DIR, TRUST_TARGET,
             "/run/isofeat/dind",
             "/home/claude/.claude", "/home/claude/.codex", "/home/claude/.gemini"}
    rows.append(("15", "mounts of dev", f"only {sorted(named)}", sorted(mounts),
                 set(mounts) <= named))
    binds_rw = sorted(d for d, m in mounts.items() if m["Type"] == "bind" and m["RW"])
    rows.append(("15", "read-write host folders", "the workspace, the agent's git and the "
                 "notification folder", binds_rw,
                 set(binds_rw) <= {"/workspace", "/workspace/.git", "/run/isofeat/notify"}))
    security_report.many("attack", rows)


def baked_root_path(baked: Baked) -> list[str]:
    """The folders on root's PATH in `dev` (the image's environment, what `docker exec -u
    root` uses)."""
    env = json.loads(subprocess.run(["docker", "inspect", baked.container("dev")],
                                    capture_output=True, text=True,
                                    check=True).stdout)[0]["Config"]["Env"]  # fmt: skip
    path = next(v.split("=", 1)[1] for v in env if v.startswith("PATH="))
    return [d for d in path.split(":") if d]


# ------------------------------------------------------------------ cases 16-17: host inputs


def test_host_side_inputs_cases_16_and_17(baked: Baked, security_report: Any) -> None:
    canary = baked.ws.parent / "canary.txt"
    canary.write_text("host secret\n")
    before = (canary.read_text(), canary.stat().st_mtime_ns)
    pwned = baked.ws.parent / f"pwned-{uuid.uuid4().hex[:6]}"
    esc = "\x1b]0;owned\x07\x1b[2J"
    marker = uuid.uuid4().hex
    note = {"v": 1, "id": marker, "urgency": "info", "created": "2026-12-01T00:00:00Z",
            "title": f"$(touch {pwned})`touch {pwned}`{esc}",
            "message": f"{marker}; touch {pwned} | sh {esc}"}
    # Written as the agent, into its notification folder: each hostile shape once, under
    # names the watcher accepts, so that each one reaches the check it is aimed at.
    names = {kind: f"{i}-{uuid.uuid4().hex}.json" for i, kind in enumerate(
        ["link", "passwd", "fifo", "dir", "big", "hostile", "invalid"], start=1)}
    script = f"""
        set -u
        cd /run/isofeat/notify
        ln -s {canary} {names['link']}
        ln -s /etc/passwd {names['passwd']}
        mkfifo {names['fifo']}
        mkdir {names['dir']} && echo '{{}}' > {names['dir']}/inner.json
        head -c 2000000 /dev/zero | tr '\\0' a > {names['big']}
        printf '%s' {json.dumps(json.dumps(note))} > {names['hostile']}
        printf '{{not json' > {names['invalid']}
        ls -la
    """
    wrote = baked.probe([["w", "sh", script]])["w"]
    assert names["hostile"] in wrote["out"], wrote
    root = Path(baked.env["XDG_STATE_HOME"]) / "isofeat" / "notify"
    done = subprocess.run([sys.executable, "-m", "isofeat", "notify", "watch", "--once",
                           "--backend", "stdout", "--root", str(root)],
                          capture_output=True, text=True, env=baked.env, timeout=60,
                          check=False)  # fmt: skip
    said = done.stdout + done.stderr
    rows: list[Row] = [
        ("16", "hostile notifications: the watcher's exit", "0", done.returncode,
         done.returncode == 0),
        ("16", "a symlink to a host file", "not followed: the file's content is not shown",
         "shown" if "host secret" in said else "not shown", "host secret" not in said),
        ("16", "a symlink to /etc/passwd", "not followed", "shown" if "root:x:0" in said
         else "not shown", "root:x:0" not in said),
        ("16", "the host file behind the link", "unchanged",
         "unchanged" if (canary.read_text(), canary.stat().st_mtime_ns) == before else "changed",
         (canary.read_text(), canary.stat().st_mtime_ns) == before),
        ("16", "shell metacharacters in title and body", "never run",
         "ran" if pwned.exists() else "not run", not pwned.exists()),
        ("16", "a valid notification with hostile text", "shown once, as data",
         f"shown {said.count(marker)} time(s)", said.count(marker) == 1),
        ("16", "ANSI and OSC escapes", "no raw ESC or BEL in the output",
         repr(said[-160:]), "\x1b" not in said and "\x07" not in said),
    ]
    for kind in ("link", "passwd", "fifo", "dir", "big", "invalid"):
        rows.append(("16", f"a {kind} entry", "skipped with a warning, the watcher not stuck",
                     "warned" if names[kind] in said else "silent", names[kind] in said))
    security_report.many("attack", rows)

    # Case 17: names and paths given to the host CLI.
    rows = []
    snapshot = tree_digest(baked.ws.parent)
    for bad in ["../x", "/tmp/x", "a b", "a\nb", "--force", "-x", "x/../../y", ".", "..",
                "a\x1b[31m", "a" * 300, ""]:
        done = subprocess.run([sys.executable, "-m", "isofeat", "task", "new", bad],
                              cwd=baked.ws, capture_output=True, text=True, env=baked.env,
                              check=False, timeout=60)  # fmt: skip
        said = done.stdout + done.stderr
        ok = done.returncode == 2 and "\x1b" not in said
        rows.append(("17", f"task new {bad[:40]!r}", "exit 2, nothing created",
                     f"exit {done.returncode}: {said.strip()[:120]}", ok))
    branches = subprocess.run(["git", "-C", str(baked.ws), "branch", "--list"],
                              capture_output=True, text=True, check=True).stdout.split()
    rows.append(("17", "branches after the bad names", "only main", branches,
                 branches in (["*", "main"],)))
    rows.append(("17", "files around the project after the bad names", "unchanged",
                 "unchanged" if tree_digest(baked.ws.parent) == snapshot else "changed",
                 tree_digest(baked.ws.parent) == snapshot))
    security_report.many("input", rows)


def tree_digest(root: Path) -> str:
    """Names, types and sizes of everything under ``root`` except the workspace's own
    changing files: what a bad name could have created or deleted."""
    h = hashlib.sha256()
    for top, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [d for d in dirs if d not in {"objects", "logs"}]
        for name in sorted(files):
            p = Path(top, name)
            with_stat = p.lstat()
            if stat.S_ISREG(with_stat.st_mode) and name in {"index", "FETCH_HEAD"}:
                continue
            h.update(f"{p.relative_to(root)}\0{stat.S_IFMT(with_stat.st_mode)}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ cases 20-22


def test_host_resources_and_git_cases_20_to_22(
    baked: Baked, security_report: Any, host_server: int,
) -> None:
    sandbox = json.loads(subprocess.run(
        ["docker", "network", "inspect", f"{baked.project}_sandbox"], capture_output=True,
        text=True, check=True).stdout)[0]  # fmt: skip
    gateway = sandbox["IPAM"]["Config"][0]["Gateway"]
    targets = dict.fromkeys([gateway, *host_addresses(), "host.docker.internal",
                             "gateway.docker.internal"])
    git_before = host_git_state(baked.ws)
    attack = r"""
        set -u
        cd /workspace
        printf '#!/bin/sh\ntouch /tmp/hook-ran\n' > .git/hooks/post-checkout
        chmod +x .git/hooks/post-checkout
        git config core.fsmonitor 'touch /tmp/fsmonitor-ran'
        git config core.hooksPath /workspace/hooks
        echo x > agent.txt && git add agent.txt && git -c user.name=a -c user.email=a@a \
            commit -qm agent && echo committed
        git update-ref refs/heads/main HEAD~1 2>/dev/null; git branch -f main HEAD 2>/dev/null
        echo y > /run/isofeat/git-objects/info/alternates 2>/dev/null || echo objects-ro
    """
    plan: list[list[Any]] = [[f"host {t}", "tcp", t, host_server] for t in targets]
    # cgroup v2 file first, then v1's (this machine runs v1); an unset limit reads "max" or -1.
    plan += [[key, "sh", f"cat {v2} 2>/dev/null || cat {v1}"] for key, v2, v1 in (
        ("pids", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
        ("mem", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        ("cpu", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))]
    plan += [
             ["git", "sh", attack]]
    seen = baked.probe(plan)
    rows: list[Row] = []
    for t in targets:
        got = seen[f"host {t}"]
        rows.append(("20", f"a host server on 0.0.0.0:{host_server}, at {t}",
                     "no answer (no refusal either)", got,
                     no_connection(got) and HOST_ANSWER.decode() not in str(got)))
    unlimited = str(2**63 - 4096)  # cgroup v1's "no memory limit" on 4 KiB pages
    for key, name in (("pids", "process limit"), ("mem", "memory limit"), ("cpu", "CPU quota")):
        value = seen[key]["out"].strip()
        rows.append(("21", f"dev's cgroup {name}", "a limit (not max, -1 or unlimited)", value,
                     seen[key]["rc"] == 0 and value.split()[0] not in ("max", "-1", unlimited)))
    assert "committed" in seen["git"]["out"], seen["git"]
    # The host brings the agent's work back the only way it does, as data.
    fetched = subprocess.run([sys.executable, "-m", "isofeat", "fetch"], cwd=baked.ws,
                             capture_output=True, text=True, env=baked.env, check=False,
                             timeout=120)  # fmt: skip
    git_after = host_git_state(baked.ws)
    rows.append(("22", "isofeat fetch of the agent's work", "exit 0",
                 f"exit {fetched.returncode}: {fetched.stderr.strip()[-120:]}",
                 fetched.returncode == 0))
    for part in ("main", "config", "hooks"):
        rows.append(("22", f"the user's {part} after the agent's attack and a fetch",
                     "unchanged", "unchanged" if git_before[part] == git_after[part]
                     else f"{git_before[part]} -> {git_after[part]}",
                     git_before[part] == git_after[part]))
    planted = [p for p in ("/tmp/hook-ran", "/tmp/fsmonitor-ran") if Path(p).exists()]
    rows.append(("22", "the agent's hook and fsmonitor on the host", "never run",
                 planted or "not run", not planted))
    security_report.many("attack", rows)


def host_git_state(ws: Path) -> dict[str, str]:
    git = ws / ".git"
    def run(*args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(git), "-c", "core.fsmonitor=false",
                               "-c", "core.hooksPath=/dev/null", *args], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    hooks = sorted(p.name for p in (git / "hooks").iterdir()) if (git / "hooks").is_dir() else []
    return {"main": run("rev-parse", "refs/heads/main"),
            "config": hashlib.sha256((git / "config").read_bytes()).hexdigest()[:16],
            "hooks": ",".join(hooks)}


# ------------------------------------------------------------------ case 18, last: it breaks


def test_zz_fail_closed_case_18(baked: Baked, security_report: Any) -> None:
    """Runs last in this module: it stops the proxy of the shared environment."""
    subprocess.run(["docker", "stop", "-t", "1", baked.container("proxy")], check=True,
                   capture_output=True)  # fmt: skip
    seen = baked.probe([
        ["allowed", "sh", f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 "
                          f"https://{ALLOWED}/; echo \" rc=$?\""],
        ["direct", "tcp", "140.82.112.3", 443],
        ["agent", "sh", "isofeat run claude --version 2>&1; echo rc=$?"],
    ])
    agent = seen["agent"]["out"]
    security_report.many("attack", [
        ("18", f"with the proxy down, HTTPS to {ALLOWED}", "fails (curl 5, 6, 7 or 28)",
         seen["allowed"]["out"].strip(),
         any(f"rc={c}" in seen["allowed"]["out"] for c in (5, 6, 7, 28))),
        ("18", "with the proxy down, direct TCP to github's address", "no connection",
         seen["direct"], no_connection(seen["direct"])),
        ("18", "with the proxy down, run-claude", "refuses: self-test failed",
         agent.strip()[-120:], "sandbox self-test failed" in agent and "rc=1" in agent),
    ])

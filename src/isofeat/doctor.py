"""``isofeat doctor``: the sandbox self-test, run from the agent's side.

Every check looks at the sandbox the way the agent would: from inside the container, as the
agent's user. A failed check fails the whole test; ``run-claude`` refuses to launch an agent
until it passes, and at every start the ``postStartCommand`` (``isofeat doctor
--stop-on-failure``) stops the container when a check fails: a sandbox whose self-test failed
does not keep running.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from isofeat import layout
from isofeat.envvars import ISOFEAT_WORKSPACE

EXPECTED_UID = layout.SANDBOX_UID
EXPECTED_GID = layout.SANDBOX_GID
DENIED_PROBE = "isofeat-doctor-denied.invalid"
#: Outside addresses that must not be reachable directly: public resolvers, by IP.
DIRECT_PROBES = (("1.1.1.1", 443), ("8.8.8.8", 53), ("9.9.9.9", 443))
DNS_PROBES = ("example.com", "github.com")
IPV6_PROBE = ("2606:4700:4700::1111", 443)
TIMEOUT = 3.0
#: The user's git objects, mounted read-only for the agent's git to borrow (compose.yaml).
GIT_OBJECTS = Path(layout.GIT_OBJECTS_TARGET)
SETUID_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/lib/dbus-1.0")


def workspace(environ: Mapping[str, str] = os.environ) -> Path:
    """The workspace as the container sees it: /workspace, or $ISOFEAT_WORKSPACE (tests)."""
    return Path(environ.get(ISOFEAT_WORKSPACE) or layout.WORKSPACE_TARGET)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _status(path: str = "/proc/self/status") -> dict[str, str]:
    fields: dict[str, str] = {}
    with open(path, encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def check_user() -> Check:
    import grp
    import pwd

    uid, gid = os.getuid(), os.getgid()
    name = pwd.getpwuid(uid).pw_name if uid else "root"
    groups = {grp.getgrgid(g).gr_name for g in os.getgroups()} | {grp.getgrgid(gid).gr_name}
    ok = uid == EXPECTED_UID and EXPECTED_GID in {gid, *os.getgroups()}
    return Check("user", ok, f"uid={uid} ({name}) gid={gid} groups={','.join(sorted(groups))}; "
                 f"want uid {EXPECTED_UID} in gid {EXPECTED_GID}")


def check_capabilities() -> Check:
    status = _status()
    cap_eff = int(status.get("CapEff", "f"), 16)
    cap_prm = int(status.get("CapPrm", "f"), 16)
    nnp = status.get("NoNewPrivs", "0")
    ok = cap_eff == 0 and cap_prm == 0 and nnp == "1"
    return Check("capabilities", ok,
                 f"CapEff={cap_eff:#x} CapPrm={cap_prm:#x} NoNewPrivs={nnp}; want 0, 0, 1")


def check_no_sudo() -> Check:
    found = [p for p in ("sudo", "doas", "pkexec") if shutil.which(p)]
    setuid: list[str] = []
    for folder in SETUID_DIRS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID and st.st_uid == 0:
                        setuid.append(entry.path)
    ok = not found and not setuid
    detail = "no sudo/doas/pkexec, no setuid-root programs"
    if not ok:
        detail = f"found: {', '.join(found + setuid)}"
    return Check("no-sudo", ok, detail)


#: The nested (Docker-in-Docker) engine's socket: expected when the template enables DinD.
DIND_SOCKET = "/run/isofeat/dind/docker.sock"


def check_no_docker_socket() -> Check:
    """No host engine: its socket would be root on the host. The nested engine is allowed."""
    sockets = [p for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")
               if os.path.exists(p)]
    host = os.environ.get("DOCKER_HOST", "")
    host_ok = host in ("", f"unix://{DIND_SOCKET}")
    ok = not sockets and host_ok
    if sockets:
        detail = f"found {', '.join(sockets)}"
    elif not host_ok:
        detail = f"DOCKER_HOST={host} is not the nested engine"
    else:
        nested = "; the nested engine's socket only" if host else ""
        detail = f"no host engine socket{nested}"
    return Check("no-docker-socket", ok, detail)


def _can_write(folder: Path) -> tuple[bool, str]:
    try:
        fd, path = tempfile.mkstemp(prefix=".isofeat-doctor-", dir=folder)
    except OSError as err:
        return False, errno.errorcode.get(err.errno or 0, str(err))
    os.close(fd)
    os.unlink(path)
    return True, "writable"


def check_writes() -> Check:
    home = Path(os.path.expanduser("~"))
    must_write = [workspace(), home]
    must_not = [Path("/usr"), Path("/etc"), Path("/opt"), workspace() / layout.DEVCONTAINER_DIR,
                GIT_OBJECTS]
    problems, notes = [], []
    for folder in must_write:
        ok, why = _can_write(folder)
        notes.append(f"{folder}: {why}")
        if not ok:
            problems.append(f"cannot write {folder} ({why})")
    for folder in must_not:
        if not folder.exists():
            continue
        ok, why = _can_write(folder)
        notes.append(f"{folder}: {'WRITABLE' if ok else 'read-only (' + why + ')'}")
        if ok:
            problems.append(f"{folder} is writable")
    return Check("writes", not problems, "; ".join(problems) if problems else "; ".join(notes))


def _mount_points(path: str = "/proc/self/mountinfo") -> set[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        # Field 5 is the mount point, with spaces and the like octal-escaped (\040).
        return {line.split()[4].encode().decode("unicode_escape") for line in fh if line.strip()}


def check_git() -> Check:
    """The agent's git is its own (a mount the agent cannot rename), and it works.

    The user's ``.git`` never enters the container: ``isofeat init`` mounts a repository of the
    environment's own over ``.git`` and the user's objects read-only (docs/threat-model.md).
    """
    import subprocess

    dot = workspace() / ".git"
    if not os.path.lexists(dot):
        return Check("git", True, "no git in the workspace")
    problems = []
    if str(dot) not in _mount_points():
        problems.append(f"{dot} is not a mount point (the agent could rename or replace it)")
    exe = shutil.which("git")
    if exe is None:
        return Check("git", not problems, "; ".join(problems) or "git is not installed")
    proc = subprocess.run([exe, "-C", str(workspace()), "rev-parse", "--absolute-git-dir"],
                          capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        problems.append(f"git does not work here: {proc.stderr.strip()[:200]}")
    detail = "; ".join(problems) or f"own git at {proc.stdout.strip()}, user's objects read-only"
    return Check("git", not problems, detail)
# --------------------------------------------------------------------------- root's PATH

#: Root's PATH in a login shell on Debian (/etc/profile, login.defs ENV_SUPATH).
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_path(environ_file: str = "/proc/1/environ") -> str:
    """The PATH every process of the container starts with, ``docker exec -u root`` included:
    PID 1's (the agent's own PATH may hold folders its shell profile added)."""
    try:
        with open(environ_file, "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"PATH="):
                    return item[5:].decode("utf-8", "replace")
    except OSError:
        pass
    return ""


def _changeable(path: str, uid: int, gid: int) -> str | None:
    """Why the user ``uid`` (group ``gid``) can change ``path`` itself, or None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None  # missing: whoever can write its parent can create it; that is checked
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"owned by uid {uid}" if st.st_uid == uid else None  # a link's mode means nothing
    if st.st_uid == uid:
        return f"owned by uid {uid}"
    if os.getuid() == uid:
        # The kernel's answer, as that user: ACLs and read-only mounts count.
        return f"writable (mode {mode:o})" if os.access(path, os.W_OK) else None
    if mode & stat.S_IWOTH or (st.st_gid == gid and mode & stat.S_IWGRP):
        return f"writable (gid {st.st_gid}, mode {mode:o})"
    return None


def path_findings(path_value: str, uid: int = EXPECTED_UID, gid: int = EXPECTED_GID) -> list[str]:
    """Everything on ``path_value`` that ``uid``/``gid`` could change so that root runs it: each
    folder, every parent of it, each program in it, and where a program's links lead."""
    findings: dict[str, str] = {}
    seen: set[str] = set()

    def check_chain(path: str) -> None:
        current = path
        while current not in seen:
            seen.add(current)
            why = _changeable(current, uid, gid)
            if why:
                findings[current] = why
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent

    for entry in dict.fromkeys(path_value.split(":")):
        if not entry.startswith("/"):
            # Empty or relative: root would run programs from whatever folder it is in.
            findings[entry or "(empty entry)"] = "relative: resolves to the current folder"
            continue
        for folder in dict.fromkeys((entry, os.path.realpath(entry))):
            check_chain(folder)
            with contextlib.suppress(OSError), os.scandir(folder) as programs:
                for program in programs:
                    check_chain(program.path)
                    if program.is_symlink():
                        check_chain(os.path.realpath(program.path))
    return [f"{path}: {why}" for path, why in findings.items()]


def check_root_path(environ_file: str = "/proc/1/environ") -> Check:
    """Nothing root might run in the container is writable by the agent.

    Root runs commands here through ``docker exec -u root`` and lifecycle hooks, with the
    container's PATH. A folder on it that the agent can write (the agents' npm prefix was
    one) lets the agent plant a ``git`` or ``ls`` that root runs next.
    """
    paths = [p for p in (container_path(environ_file), ROOT_PATH) if p]
    found = list(dict.fromkeys(f for p in paths for f in path_findings(p)))
    if not found:
        folders = ":".join(dict.fromkeys(f for p in paths for f in p.split(":")))
        return Check("root-path", True, f"nothing on root's PATH is writable by uid "
                     f"{EXPECTED_UID} or gid {EXPECTED_GID} ({folders})")
    shown = "; ".join(found[:8]) + (f"; and {len(found) - 8} more" if len(found) > 8 else "")
    return Check(
        "root-path", False,
        f"root's PATH holds what the agent can change: {shown}. Fix: make these root's and "
        "not group- or world-writable in the image (chown root:root; chmod go-w), e.g. "
        "rebuild with the current ai-agents Feature",
    )


def proxy_url(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get("HTTPS_PROXY") or environ.get("https_proxy") or environ.get("HTTP_PROXY")


def check_proxy_env(environ: Mapping[str, str] = os.environ) -> Check:
    names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    missing = [n for n in names if not environ.get(n)]
    return Check("proxy-env", not missing,
                 f"missing {', '.join(missing)}" if missing else f"proxy {proxy_url(environ)}")


def _with_timeout(fn: Callable[[], str], seconds: float) -> tuple[bool, str]:
    """Run ``fn`` in a thread; (True, result) if it returned, (False, why) if not."""
    result: list[str] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as err:  # reported to the caller, not swallowed
            error.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return False, "timed out"
    if error:
        return False, f"{type(error[0]).__name__}: {error[0]}"
    return True, result[0]


def check_direct_egress() -> Check:
    from concurrent.futures import ThreadPoolExecutor

    def attempt(probe: tuple[str, int]) -> str | None:
        def connect() -> str:
            with socket.create_connection(probe, timeout=TIMEOUT):
                return "connected"

        ok, _ = _with_timeout(connect, TIMEOUT + 1)
        return f"{probe[0]}:{probe[1]}" if ok else None

    with ThreadPoolExecutor(max_workers=len(DIRECT_PROBES)) as pool:
        reached = [r for r in pool.map(attempt, DIRECT_PROBES) if r]
    return Check("direct-egress", not reached,
                 f"reached {', '.join(reached)} without the proxy" if reached else
                 "no direct TCP to outside addresses")


def check_dns() -> Check:
    resolved = []
    for name in DNS_PROBES:

        def lookup(name: str = name) -> str:
            return str(socket.getaddrinfo(name, 443)[0][4][0])

        ok, answer = _with_timeout(lookup, TIMEOUT)
        if ok:
            resolved.append(f"{name}={answer}")
    return Check("dns", not resolved,
                 f"resolved {', '.join(resolved)}" if resolved else "external names do not resolve")


def check_ipv6() -> Check:
    addresses = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if parts and parts[-1] != "lo":
                addresses.append(f"{parts[-1]}:{parts[0]}")

    def attempt() -> str:
        with socket.create_connection(IPV6_PROBE, timeout=TIMEOUT):
            return "connected"

    reached, _ = _with_timeout(attempt, TIMEOUT + 1)
    ok = not addresses and not reached
    return Check("ipv6", ok, "no IPv6 addresses or routes" if ok else
                 f"addresses={addresses} reached={reached}")


# --------------------------------------------------------------------------- the host

#: Names under which Docker Desktop, Podman and ``extra_hosts: host-gateway`` give the host.
HOST_NAMES = ("host.docker.internal", "gateway.docker.internal", "host.containers.internal")
#: Docker's default bridge (docker0) on the host, where most engines put it.
HOST_ADDRESSES = ("172.17.0.1",)
#: Ports to knock on. One answer of any kind is enough; several ports, so that a host firewall
#: that drops all but a few services is still caught (ssh, web, engine API, dev servers,
#: databases, a local model server).
HOST_PORTS = (22, 80, 443, 2375, 3000, 5432, 8000, 8080, 11434)
#: Set to 1 in ``dev`` by compose.yaml when isofeat.json says ``"allowHostAccess": true``.
ALLOW_HOST_ACCESS = "ISOFEAT_ALLOW_HOST_ACCESS"
#: errno values that prove a host at that address answered: it refused or reset the connection.
_ANSWERED = {errno.ECONNREFUSED, errno.ECONNRESET}


def route_gateways(path: str = "/proc/net/route") -> list[str]:
    """Every gateway in the IPv4 routing table, the default route's first."""
    found: list[tuple[bool, str]] = []
    with contextlib.suppress(OSError), open(path, encoding="ascii") as fh:
        for line in list(fh)[1:]:
            fields = line.split()
            if len(fields) < 3 or int(fields[2], 16) == 0:
                continue
            address = socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
            found.append((fields[1] != "00000000", address))
    return list(dict.fromkeys(address for _, address in sorted(found)))


#: An answer counts only when the same address answers again, in one of this many more rounds
#: of knocks, CONFIRM_PAUSE seconds apart. A host that is reachable stays reachable; a
#: connect() reported open with no SYN on the wire (seen at container start, docs/
#: threat-model.md) does not repeat, and must not stop a sandbox that is closed.
CONFIRM_ROUNDS = 2
CONFIRM_PAUSE = 0.5
#: tcpi_state values, for the evidence of an answer (include/net/tcp_states.h).
_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
               11: "CLOSING"}


@dataclass(frozen=True)
class Knock:
    """How one TCP connect to the host ended, and what the kernel said about the socket."""

    address: str
    port: int
    how: str | None  # "open", "econnrefused", "econnreset"; None for silence
    evidence: str = ""

    def __str__(self) -> str:
        return f"{self.address}:{self.port} {self.how} ({self.evidence})"


def _socket_evidence(sock: socket.socket, seconds: float) -> str:
    """The peer and TCP state of a socket whose connect() reported success: a real connection
    has a peer; the state tells a live one from one already reset."""
    try:
        peer = "{}:{}".format(*sock.getpeername())
    except OSError as err:
        peer = f"none ({errno.errorcode.get(err.errno or 0, err.errno)})"
    try:
        state = _TCP_STATES.get(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0], "?")
    except OSError:
        state = "?"
    return f"peer {peer}, state {state}, after {seconds:.2f} s"


def knock_evidence(address: str, port: int, timeout: float = TIMEOUT) -> Knock:
    """How the host at ``address`` answered a TCP connect to ``port``.

    "open" (a listener accepted) and "refused" (the host's kernel sent a reset) both prove
    the host is reachable: only a timeout or an unreachable network/host means it is not.
    """
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            code = sock.connect_ex((address, port))
        except OSError:  # timeout, or no such address family here
            return Knock(address, port, None)
        seconds = time.monotonic() - started
        if code == 0:
            return Knock(address, port, "open", _socket_evidence(sock, seconds))
    if code in _ANSWERED:
        return Knock(address, port, errno.errorcode[code].lower(), f"after {seconds:.2f} s")
    return Knock(address, port, None)


def knock_all(probes: list[tuple[str, int]]) -> list[Knock]:
    """Every (address, port) at once: each silent one waits out its timeout."""
    from concurrent.futures import ThreadPoolExecutor

    if not probes:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(probes))) as pool:
        return list(pool.map(lambda probe: knock_evidence(*probe), probes))


def _host_targets() -> tuple[list[str], list[str]]:
    """(addresses to knock on, how each name resolved)."""
    targets = [*route_gateways(), *HOST_ADDRESSES]
    names = []
    for name in HOST_NAMES:

        def lookup(name: str = name) -> str:
            return str(socket.getaddrinfo(name, 0, socket.AF_INET)[0][4][0])

        ok, answer = _with_timeout(lookup, TIMEOUT)
        if ok:
            names.append(f"{name}={answer}")
            targets.append(answer)
    return list(dict.fromkeys(targets)), names


def arp_entries(addresses: list[str], path: str = "/proc/net/arp") -> str:
    """"; next hop <ip> is <mac>" for the neighbours that answered, then every other
    resolved neighbour: which interface took the traffic (a container's MAC is 02:42 and
    its IPv4 address) is what a report needs."""
    wanted = set(addresses) | set(route_gateways())
    hops: list[str] = []
    others: list[str] = []
    with contextlib.suppress(OSError), open(path, encoding="ascii") as fh:
        for line in list(fh)[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] == "00:00:00:00:00:00":
                continue
            (hops if fields[0] in wanted else others).append(f"{fields[0]} is {fields[3]}")
    said = f"; next hop {', '.join(hops)}" if hops else "; no resolved next hop"
    return said + (f"; other neighbours {', '.join(others)}" if others else "")


def route_table(path: str = "/proc/net/route") -> str:
    """"; routes <dest>/<bits> via <gateway> dev <iface>, ...": with the neighbours, enough
    to tell after the fact where a host answer came from (the container is stopped by then)."""
    routes = []
    with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as fh:
        for line in list(fh)[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            dest, gateway = (socket.inet_ntoa(int(f, 16).to_bytes(4, "little"))
                             for f in (fields[1], fields[2]))
            bits = bin(int(fields[7], 16)).count("1")
            via = f" via {gateway}" if int(fields[2], 16) else ""
            routes.append(f"{dest}/{bits}{via} dev {fields[0]}")
    return f"; routes {', '.join(routes)}" if routes else ""


def confirm_answers(first: list[Knock]) -> tuple[list[Knock], list[Knock]]:
    """(answers from addresses that answered again, answers that did not repeat).

    Each address that answered is knocked on again, on every port, up to CONFIRM_ROUNDS times.
    """
    answered = [k for k in first if k.how]
    pending = list(dict.fromkeys(k.address for k in answered))
    confirmed: set[str] = set()
    for _ in range(CONFIRM_ROUNDS):
        if not pending:
            break
        time.sleep(CONFIRM_PAUSE)
        again = knock_all([(address, port) for address in pending for port in HOST_PORTS])
        confirmed |= {k.address for k in again if k.how}
        pending = [address for address in pending if address not in confirmed]
    return ([k for k in answered if k.address in confirmed],
            [k for k in answered if k.address not in confirmed])


def check_host_access(environ: Mapping[str, str] = os.environ) -> Check:
    """Nothing on the host answers: not at the gateway, docker0, or host.docker.internal.

    Developers bind servers to 0.0.0.0 on their machines; from a container whose network has
    an address on the host, those answer, and the proxy's whitelist is bypassed entirely.
    """
    targets, names = _host_targets()
    first = knock_all([(address, port) for address in targets for port in HOST_PORTS])
    reached_knocks, unrepeated = confirm_answers(first)
    by_address: dict[str, list[str]] = {}
    for k in reached_knocks:
        by_address.setdefault(k.address, []).append(f"{k.port} {k.how}")
    reached = [f"{address} (port {', '.join(ports)})" for address, ports in by_address.items()]
    resolved = f"; {', '.join(names)}" if names else ""
    # Shown either way: an answer that did not repeat is not counted, but not hidden either.
    unconfirmed = (
        f"; not counted, because no port of the address answered again in {CONFIRM_ROUNDS} "
        f"more rounds: {'; '.join(map(str, unrepeated))}{arp_entries([])}{route_table()}"
        if unrepeated else ""
    )
    if not reached:
        return Check("host-access", True,
                     f"no {'repeated ' if unrepeated else ''}answer from the host at "
                     f"{', '.join(targets) or 'no gateway'}{resolved}{unconfirmed}")
    evidence = "; ".join(str(k) for k in reached_knocks if k.how == "open")
    detail = (
        f"the host answered at {'; '.join(reached)}, and again when asked once more"
        f"{resolved} (a refusal is an answer too): any server on the host bound to 0.0.0.0 "
        f"is open to the agent, past the proxy"
        f"{'; connections: ' + evidence if evidence else ''}{arp_entries(list(by_address))}"
        f"{route_table()}{unconfirmed}"
    )
    if environ.get(ALLOW_HOST_ACCESS) == "1":
        return Check("host-access", True,
                     f"ACCEPTED by allowHostAccess in .devcontainer/isofeat.json: {detail}")
    return Check(
        "host-access", False,
        f"{detail}. Fix: on Linux, give the sandbox network no address on the host (compose.yaml: "
        'networks.sandbox.driver_opts "com.docker.network.bridge.inhibit_ipv4": "true"; '
        "`isofeat scaffold --force` writes it), or drop its traffic to the host "
        "(iptables -I INPUT -i <bridge of the sandbox network> -j DROP). Where that cannot be "
        '(Docker Desktop), accept the risk with "allowHostAccess": true in '
        ".devcontainer/isofeat.json (docs/threat-model.md)",
    )


def proxy_status(target: str, environ: Mapping[str, str] = os.environ) -> int | None:
    """Send ``CONNECT target`` to the configured proxy; return its status code."""
    url = proxy_url(environ)
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        return None
    with socket.create_connection((parts.hostname, parts.port or 8888), timeout=TIMEOUT * 2) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = s.recv(1024).split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else None


def _live_env_file() -> dict[str, str]:
    """``.devcontainer/.env`` as `isofeat init` last wrote it (read-only in here).

    Compose copies the probes into the environment when it creates the container; after
    ``isofeat init && isofeat proxy reload`` (a new whitelist without a restart) only this
    file matches what the proxy now enforces.
    """
    values: dict[str, str] = {}
    env_file = workspace() / layout.DEVCONTAINER_DIR / layout.ENV_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in env_file.read_text("utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                values[key] = value.strip("'")
    return values


def _probe(name: str, environ: Mapping[str, str]) -> str:
    """HOST:PORT from ``name``, which `isofeat init` chose on the merged, rendered whitelist.

    Deriving it here again would be wrong: the container sees only the project's whitelist,
    not the user's global file, which may remove what the built-in list allows.
    """
    value = _live_env_file().get(name, environ.get(name))
    if value is None:
        raise LookupError(f"{name} is not set; run `isofeat init` on the host and rebuild the "
                          "container (compose.yaml passes it to `dev`)")
    if not value:
        raise LookupError(f"{name} is empty: the merged whitelist allows no host to probe")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not value.isprintable() or " " in value:
        raise LookupError(f"{name}={value!r} is not HOST:PORT")
    return value


def allowed_probe(environ: Mapping[str, str] = os.environ) -> str:
    """A HOST:PORT the rendered filter allows (``$ISOFEAT_PROBE_ALLOWED``)."""
    from isofeat.envvars import ISOFEAT_PROBE_ALLOWED

    return _probe(ISOFEAT_PROBE_ALLOWED, environ)


def denied_probe(environ: Mapping[str, str] = os.environ) -> str:
    """A HOST:PORT the rendered filter denies (``$ISOFEAT_PROBE_DENIED``).

    Without the variable, the built-in name: nothing the user adds can allow it by accident.
    """
    from isofeat.envvars import ISOFEAT_PROBE_DENIED

    if ISOFEAT_PROBE_DENIED not in environ and ISOFEAT_PROBE_DENIED not in _live_env_file():
        return f"{DENIED_PROBE}:443"
    return _probe(ISOFEAT_PROBE_DENIED, environ)


def check_denied_name(environ: Mapping[str, str] = os.environ) -> Check:
    try:
        target = denied_probe(environ)
    except LookupError as err:
        return Check("proxy-denies", False, str(err))
    ok, answer = _with_timeout(lambda: str(proxy_status(target, environ)), TIMEOUT * 3)
    passed = ok and answer == "403"
    return Check("proxy-denies", passed,
                 f"CONNECT {target}: {answer if ok else 'no answer (' + answer + ')'}; want 403")


def check_allowed_name(environ: Mapping[str, str] = os.environ) -> Check:
    try:
        target = allowed_probe(environ)
    except LookupError as err:
        return Check("proxy-allows", False, str(err))
    ok, answer = _with_timeout(lambda: str(proxy_status(target, environ)), TIMEOUT * 3)
    # Anything but 403 means the filter let it through; 200 means the far end answered too.
    passed = ok and answer not in ("403", "None")
    return Check("proxy-allows", passed,
                 f"CONNECT {target}: {answer if ok else 'no answer (' + answer + ')'}; "
                 "want anything but 403")


# --------------------------------------------------------------------------- the engine's DNS

RESOLV_CONF = "/etc/resolv.conf"
#: The DNS options compose.yaml gives `dev` (``dns_opt``). Options of its own put the engine
#: on the path that forwards from the container's namespace (see check_engine_dns).
OWN_DNS_OPTIONS = ("timeout:1", "attempts:1")


def resolv_options(path: str = RESOLV_CONF) -> list[str]:
    """The ``options`` of this container's resolv.conf, as the engine wrote them."""
    found: list[str] = []
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
        for line in fh:
            words = line.split()
            if words and words[0] == "options":
                found += words[1:]
    return found


def check_engine_dns(environ: Mapping[str, str] = os.environ,
                     resolv_conf: str = RESOLV_CONF) -> Check:
    """The engine does not forward this sandbox's DNS queries out (CVE-2024-29018).

    The sandbox cannot ask the engine; ``isofeat init`` records its version in .env. Engines
    without the fix forward the queries of an internal network's container from the host's
    namespace, but only on one path: when the container has no DNS settings of its own and
    the host's resolv.conf names a loopback resolver. compose.yaml gives `dev` DNS options
    (``dns_opt``), which the engine writes into this container's resolv.conf; then it forwards
    from the container's own namespace, which has no route out (measured on Docker 20.10,
    tests/docker/test_dns.py). An old engine with those options passes, marked NOT FIXED.
    """
    from isofeat import engine
    from isofeat.envvars import ISOFEAT_ENGINE_VERSION

    version = _live_env_file().get(ISOFEAT_ENGINE_VERSION) or environ.get(
        ISOFEAT_ENGINE_VERSION, "")
    upgrade = f"upgrade Docker Engine (or Docker Desktop) to {engine.FIXED_TEXT}"
    if not version:
        return Check("engine-dns", False,
                     "the engine's version is unknown (ISOFEAT_ENGINE_VERSION is not set): "
                     "run `isofeat init` on the host, where the engine answers, and reopen")
    fixed = engine.has_fix(version)
    if fixed:
        return Check("engine-dns", True,
                     f"Docker Engine {version} has the {engine.CVE} fix: it forwards no DNS "
                     "query of an internal network")
    options = resolv_options(resolv_conf)
    own = all(option in options for option in OWN_DNS_OPTIONS)
    what = "is unreadable" if fixed is None else f"predates the {engine.CVE} fix"
    if own:
        return Check(
            "engine-dns", True,
            f"NOT FIXED, mitigated: Docker Engine {version} {what}, but this container has DNS "
            f"options of its own ({' '.join(OWN_DNS_OPTIONS)}), so the engine forwards its "
            f"queries from this container's namespace, which has no route out. Still, {upgrade}",
        )
    return Check(
        "engine-dns", False,
        f"Docker Engine {version} {what}: with a loopback resolver on the host (systemd-resolved, "
        "dnsmasq, a VPN's) it sends this sandbox's DNS queries out from the host's namespace, "
        f"and data with them. Fix: {upgrade}; until then keep compose.yaml's dns_opt "
        f"({', '.join(OWN_DNS_OPTIONS)}) on `dev` (`isofeat scaffold --force` writes it)",
    )


CHECKS: tuple[Callable[[], Check], ...] = (
    check_user,
    check_capabilities,
    check_no_sudo,
    check_no_docker_socket,
    check_writes,
    check_git,
    check_root_path,
    check_proxy_env,
    check_direct_egress,
    check_dns,
    check_engine_dns,
    check_ipv6,
    check_host_access,
    check_denied_name,
    check_allowed_name,
)


def _run_one(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as err:  # a crashed check is a failed check
        name = check.__name__.removeprefix("check_").replace("_", "-")
        return Check(name, False, f"check crashed: {type(err).__name__}: {err}")


def run_checks() -> list[Check]:
    """Run every check at once: the network probes wait on timeouts, so in sequence the
    self-test would take the sum of them at every container start."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        return list(pool.map(_run_one, CHECKS))


def run_for_launch() -> tuple[bool, str]:
    """For ``run-claude``: (passed, the failed checks or a summary)."""
    results = run_checks()
    failed = [c for c in results if not c.ok]
    if failed:
        return False, "; ".join(f"{c.name}: {c.detail}" for c in failed)
    return True, f"{len(results)} checks passed"


def stop_sandbox(environ: Mapping[str, str] = os.environ, proc: Path = Path("/proc")) -> str:
    """Stop this sandbox's container by ending its main process (PID 1); say what happened.

    Only inside an isofeat sandbox whose PID 1 runs as this same unprivileged user (the
    template's ``dev`` service runs as uid 1001 with an init): never on a host, and never as
    root, where PID 1 is the machine's init. The container then stays stopped (no restart
    policy), and only the host can start it again, which runs this self-test again.
    """
    from isofeat.envvars import in_sandbox

    uid = os.getuid()
    if not in_sandbox(environ):
        return "not stopping anything: this is not an isofeat sandbox (ISOFEAT_SANDBOX is not 1)"
    try:
        owner = (proc / "1").stat().st_uid
    except OSError as err:
        return f"could not stop the container: {err}"
    if uid == 0 or owner != uid:
        return (f"could not stop the container: its main process runs as uid {owner}, this "
                f"check as uid {uid}; stop it from the host")
    import signal

    try:
        os.kill(1, signal.SIGTERM)
    except OSError as err:
        return f"could not stop the container: {err}"
    return ("stopping this container: a sandbox that fails its self-test must not run. Fix the "
            "failed check on the host, then reopen the folder (devcontainer up), which checks "
            "again")

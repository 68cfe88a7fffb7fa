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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

WORKSPACE = Path(os.environ.get("ISOFEAT_WORKSPACE", "/workspace"))
EXPECTED_UID = 1001
EXPECTED_GID = 2000
DENIED_PROBE = "isofeat-doctor-denied.invalid"
#: Outside addresses that must not be reachable directly: public resolvers, by IP.
DIRECT_PROBES = (("1.1.1.1", 443), ("8.8.8.8", 53), ("9.9.9.9", 443))
DNS_PROBES = ("example.com", "github.com")
IPV6_PROBE = ("2606:4700:4700::1111", 443)
TIMEOUT = 3.0
SETUID_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/lib/dbus-1.0")


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
    must_write = [WORKSPACE, home]
    must_not = [Path("/usr"), Path("/etc"), Path("/opt"), WORKSPACE / ".devcontainer"]
    hooks = WORKSPACE / ".git" / "hooks"
    if hooks.is_dir():
        must_not.append(hooks)
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


def allowed_probe() -> str:
    """An allowed name from the whitelist the container can see (defaults + project file)."""
    from isofeat.whitelist import Layer, builtin_text, merge, read_file

    layers = [Layer("builtin:sandbox", builtin_text("sandbox"))]
    project = WORKSPACE / ".devcontainer" / "whitelist.txt"
    if project.is_file():
        layers.append(Layer(str(project), read_file(project)))
    for entry in merge(layers).entries:
        if entry.kind == "name" and not entry.wildcard:
            return f"{entry.host}:{entry.ports('connect')}"
    raise LookupError("the whitelist allows no plain host name to probe")


def check_denied_name() -> Check:
    target = f"{DENIED_PROBE}:443"
    ok, answer = _with_timeout(lambda: str(proxy_status(target)), TIMEOUT * 3)
    passed = ok and answer == "403"
    return Check("proxy-denies", passed,
                 f"CONNECT {target}: {answer if ok else 'no answer (' + answer + ')'}; want 403")


def check_allowed_name() -> Check:
    try:
        target = allowed_probe()
    except (LookupError, OSError, ValueError) as err:
        return Check("proxy-allows", False, str(err))
    ok, answer = _with_timeout(lambda: str(proxy_status(target)), TIMEOUT * 3)
    # Anything but 403 means the filter let it through; 200 means the far end answered too.
    passed = ok and answer not in ("403", "None")
    return Check("proxy-allows", passed,
                 f"CONNECT {target}: {answer if ok else 'no answer (' + answer + ')'}; "
                 "want anything but 403")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_user,
    check_capabilities,
    check_no_sudo,
    check_no_docker_socket,
    check_writes,
    check_proxy_env,
    check_direct_egress,
    check_dns,
    check_ipv6,
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
    from isofeat.agents import in_sandbox

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

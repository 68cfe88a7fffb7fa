"""The attacker's toolkit: runs inside `dev` as the agent and reports what it observed.

Standard library only: it is passed to ``python3 -c`` in the sandbox. argv[1] is a JSON list
of ``[id, kind, *args]`` probes; it prints one JSON object ``{id: observation}``. It judges
nothing: the test on the host compares each observation with what SECURITY-CASES expects.

Kinds:
  proxy  B64 [CONNECT?]    send raw bytes to the environment's proxy ($HTTP_PROXY), return its
                           status code, "closed" (no answer) or the error's name
  tcp    HOST PORT         direct TCP connect: "open:<first bytes>", "refused", or the error
  tcp6   HOST PORT         the same over IPv6
  udp    HOST PORT         send a DNS query for a unique name, "answered" or the error
  resolve NAME             getaddrinfo: the addresses, or "error:<reason>"
  write  PATH              try to create PATH (removed again): "writable" or "denied:<errno>"
  status                   Uid, Gid, Groups, CapInh/Prm/Eff/Bnd/Amb, NoNewPrivs
  setuid                   setuid and setgid files on the container's own filesystems
  sh     SCRIPT [TIMEOUT]  bash -c SCRIPT: {"rc": .., "out": ..}
  read   PATH              the first 4 KiB, or "error:<errno>"
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit


def _err(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return "no-such-name"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def proxy(payload_b64: str, connect: bool = False) -> Any:
    where = urlsplit(os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy") or "")
    data = b""
    try:
        with socket.create_connection((where.hostname or "proxy", where.port or 8888),
                                      timeout=15) as s:
            s.sendall(base64.b64decode(payload_b64))
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and (connect or data.startswith(b"HTTP/")):
                    break
    except OSError as exc:
        if not data:
            return _err(exc)
    first = data.split(b"\r\n", 1)[0].split(b" ")
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        return int(first[1])
    return "closed" if not data else "garbage"


def tcp(host: str, port: int, family: int = socket.AF_INET) -> str:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(4)
            s.connect((host, int(port)))
            try:
                got = s.recv(32)
            except OSError:
                got = b""
            return "open:" + got.decode("latin-1")
    except OSError as exc:
        return _err(exc)


def udp(host: str, port: int) -> str:
    name = f"{uuid.uuid4().hex}.isofeat-probe.test".encode()
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    query += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x01\x00\x01"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(query, (host, int(port)))
            s.recv(512)
            return "answered"
    except OSError as exc:
        return _err(exc)


def resolve(name: str) -> Any:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, 443)})
    except OSError as exc:
        return f"error:{exc}"


def write(path: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            return "denied:" + _err(exc)
        os.close(fd)
        return "writable"
    except OSError as exc:
        return "denied:" + _err(exc)
    os.close(fd)
    os.unlink(path)
    return "writable"


def status() -> dict[str, str]:
    keep = {"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp"}
    with open("/proc/self/status") as f:
        pairs = (line.split(":", 1) for line in f)
        return {k: v.strip() for k, v in pairs if k in keep}


def setuid() -> list[str]:
    found = []
    root_dev = os.stat("/").st_dev
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(top, d)).st_dev == root_dev]
        for name in files:
            path = os.path.join(top, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(path)
    return found


def sh(script: str, timeout: float = 120) -> dict[str, Any]:
    try:
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=float(timeout), check=False)
        return {"rc": done.returncode, "out": (done.stdout + done.stderr)[-4000:]}
    except subprocess.TimeoutExpired:
        return {"rc": None, "out": "timeout"}


def read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("latin-1")
    except OSError as exc:
        return "error:" + _err(exc)


def run(probe: list[Any]) -> tuple[str, Any]:
    pid, kind, *args = probe
    kinds = {"proxy": proxy, "tcp": tcp, "udp": udp, "resolve": resolve, "write": write,
             "status": status, "setuid": setuid, "sh": sh, "read": read,
             "tcp6": lambda h, p: tcp(h, p, socket.AF_INET6)}
    try:
        return pid, kinds[kind](*args)
    except Exception as exc:  # an observation too: the test decides what it means
        return pid, f"probe-error:{type(exc).__name__}:{exc}"


if __name__ == "__main__":
    plan = json.loads(sys.argv[1])
    # Concurrent: most probes wait on a timeout that is the point of the test.
    with ThreadPoolExecutor(24) as pool:
        print(json.dumps(dict(pool.map(run, plan))))

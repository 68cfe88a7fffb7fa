"""Read tinyproxy's log back: which destinations were requested, and which were denied.

The log holds whatever the sandbox put in its request lines, so every field printed from it
is escaped: an agent must not be able to write terminal escapes into the user's terminal.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from isofeat.errors import IsofeatError
from isofeat.whitelist import DEFAULT_PORTS, LineError, Mode, Policy, parse_entry

_REQUEST = re.compile(r"Request \(file descriptor (\d+)\): (\S+) (\S+)")
_FILTERED = re.compile(r'Proxying refused on filtered (?:url|domain) "(.*)"\s*$')
_BAD_PORT = re.compile(r"Refused CONNECT method on port (\d+)")
#: Probes of our own (the image's healthcheck, `isofeat doctor`): denied on purpose, not news.
OWN_PROBES = frozenset({"isofeat-healthcheck.invalid", "isofeat-doctor-denied.invalid",
                        "isofeat-ready.invalid"})


@dataclass
class Record:
    host: str
    port: int
    mode: Mode
    allowed: int = 0
    denied: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "mode": self.mode,
            "allowed": self.allowed,
            "denied": self.denied,
        }


def safe(text: str) -> str:
    """Escape everything that is not printable ASCII, so no escape sequence reaches a TTY."""
    return "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in text)


def destination(target: str, method: str) -> tuple[str, int, Mode]:
    """Where tinyproxy would connect for this request target (its own parsing rules)."""
    mode: Mode = "connect" if method.upper() == "CONNECT" else "http"
    rest = target
    if mode == "http":
        rest = target.split("://", 1)[-1] if "://" in target else target
    authority = rest.split("/", 1)[0]
    authority = authority.split("@", 1)[-1]
    port = DEFAULT_PORTS[mode]
    host = authority
    colon = authority.rfind(":")
    if colon >= 0 and "]" not in authority[colon:]:
        host, port_text = authority[:colon], authority[colon + 1 :]
        digits = re.match(r"\d+", port_text)
        port = int(digits.group()) if digits else port
    return host.lower(), port, mode


def parse(lines: Iterable[str]) -> Iterator[tuple[str, int, Mode, bool]]:
    """Yield (host, port, mode, allowed) for every request in the log."""
    pending: dict[str, tuple[str, int, Mode]] = {}
    last: tuple[str, int, Mode] | None = None
    for line in lines:
        if m := _REQUEST.search(line):
            if last is not None:
                yield (*last, True)
            last = destination(m.group(3), m.group(2))
            pending[m.group(1)] = last
        elif m := _FILTERED.search(line):
            url = m.group(1)
            method = "GET" if url.lower().startswith(("http://", "ftp://")) else "CONNECT"
            yield (*destination(url, method), False)
            last = None
        elif (m := _BAD_PORT.search(line)) and last is not None:
            yield (last[0], int(m.group(1)), "connect", False)
            last = None
    if last is not None:
        yield (*last, True)


def summarise(events: Iterable[tuple[str, int, Mode, bool]]) -> list[Record]:
    records: dict[tuple[str, int, Mode], Record] = {}
    for host, port, mode, allowed in events:
        if host in OWN_PROBES:
            continue
        rec = records.setdefault((host, port, mode), Record(host, port, mode))
        if allowed:
            rec.allowed += 1
        else:
            rec.denied += 1
    return sorted(records.values(), key=lambda r: (-r.denied, r.host, r.port))


def read_log(source: str, container: str | None) -> Iterator[tuple[str, int, Mode, bool]]:
    if container:
        return parse(_container_lines(container))
    if source == "-":
        return parse(sys.stdin)
    try:
        with open(source, encoding="utf-8", errors="replace") as fh:
            return iter(list(parse(fh)))
    except OSError as err:
        raise IsofeatError(
            f"{source}: cannot read the log: {err.strerror}",
            fix="give the proxy's log file, or '-' and pipe `docker logs` in",
        ) from None


def _container_lines(name: str) -> Iterator[str]:
    import docker  # heavy; only this path needs it

    try:
        container = docker.from_env().containers.get(name)
    except docker.errors.NotFound:
        raise IsofeatError(
            f"no container named {name!r}", fix="see `docker ps` for the proxy container's name"
        ) from None
    data: bytes = container.logs(stdout=True, stderr=True)
    return iter(data.decode("utf-8", "replace").splitlines())


def suggestions(records: Iterable[Record], policy: Policy | None) -> list[str]:
    """Whitelist lines for the denied destinations, bad names as comments."""
    lines: list[str] = []
    seen: set[str] = set()
    for rec in records:
        if not rec.denied:
            continue
        if policy is not None and policy.decide(rec.host, rec.port, rec.mode).allowed:
            continue
        text = rec.host if rec.port == DEFAULT_PORTS[rec.mode] else f"{rec.host}:{rec.port}"
        try:
            entry = parse_entry(text)
        except LineError as err:
            lines.append(f"# skipped {safe(text)}: {err.reason}")
            continue
        line = str(entry)
        if line in seen:
            continue
        seen.add(line)
        note = f"denied {rec.denied}x ({rec.mode.upper()})"
        if entry.kind != "name":
            note += "; a raw IP: add it only if you mean that address"
        lines.append(f"{line}  # {note}")
    return lines

"""The whitelist language: parse, lint, merge and decide.

One entry per line, ``#`` starts a comment::

    example.com          # exactly this host (HTTP port 80, CONNECT port 443)
    *.example.com        # any subdomain, at any depth; not example.com itself
    example.com:8443     # this host on port 8443 only (HTTP and CONNECT)
    10.0.0.5             # an IP literal, only when written out
    [2001:db8::1]:443    # an IPv6 literal, in brackets when it has a port
    !statsig.com         # drop an entry inherited from an earlier layer

Entries are literal names, never regular expressions: the proxy compiler
(:mod:`isofeat.proxy_render`) anchors and escapes every one. A line this module cannot read
exactly is an error, never a wider rule.

:meth:`Policy.decide` is the reference the compiled tinyproxy filter is tested against, so it
works on the host *as the proxy sees it on the wire*: ASCII case-folded and otherwise taken
literally (``github.com.`` and ``2001:0db8::1`` are not ``github.com`` and ``2001:db8::1``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from isofeat.errors import IsofeatError

Mode = Literal["http", "connect"]
Kind = Literal["name", "ipv4", "ipv6"]

#: The port a port-less entry allows, per request kind.
DEFAULT_PORTS: Mapping[Mode, int] = {"http": 80, "connect": 443}

#: Built-in default lists shipped with the package, by name.
BUILTIN_LISTS = ("sandbox", "dind")

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_WIRE_LABEL = re.compile(r"[a-z0-9_-]+\Z")
_PORT = re.compile(r"[1-9][0-9]{0,4}\Z")
_REGEX_CHARS = set("^$()[]{}|+?\\")
_MAX_NAME = 253


@dataclass(frozen=True)
class Source:
    """Where an entry was written: a file and a 1-based line number."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Entry:
    """One allow rule. ``host`` is normalised; IPv6 hosts are stored without brackets."""

    host: str
    kind: Kind = "name"
    wildcard: bool = False
    port: int | None = None
    source: Source = field(default=Source("<builtin>", 0), compare=False)

    @property
    def key(self) -> tuple[str, bool, int | None]:
        return (self.host, self.wildcard, self.port)

    @property
    def wire_host(self) -> str:
        """The host as it appears in a request target (IPv6 in brackets)."""
        return f"[{self.host}]" if self.kind == "ipv6" else self.host

    def ports(self, mode: Mode) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[mode]

    def matches_host(self, host: str) -> bool:
        """True when ``host`` (wire form, lower-cased, IPv6 without brackets) is this rule's."""
        if not self.wildcard:
            return host == self.host
        suffix = "." + self.host
        if not host.endswith(suffix):
            return False
        labels = host[: -len(suffix)].split(".")
        return all(_WIRE_LABEL.match(label) for label in labels)

    def __str__(self) -> str:
        text = ("*." if self.wildcard else "") + self.wire_host
        return f"{text}:{self.port}" if self.port is not None else text


@dataclass(frozen=True)
class Removal:
    """A ``!entry`` line: drops that exact entry (host, wildcard and port) from earlier lines."""

    target: Entry
    source: Source


@dataclass(frozen=True)
class Problem:
    """A line that is not a valid entry, with the reason and the fix."""

    source: Source
    text: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> tuple[str, str]:
        """The problem, then its fix, each one line (escaped by whoever prints them)."""
        return f"{self.source}: {self.reason} (got {self.text!r})", f"  fix: {self.fix}"


class LineError(ValueError):
    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


# --------------------------------------------------------------------------- parsing


def _strip_comment(raw: str) -> str:
    return raw.split("#", 1)[0].strip()


def _parse_port(text: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise LineError(
            f"bad port {text!r}: a port is a number from 1 to 65535 without leading zeros",
            "write host:port, e.g. example.com:8443",
        )
    return int(text)


def _normalise_name(name: str) -> str:
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        import idna  # only names with non-ASCII letters pay for this import

        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as err:
            raise LineError(
                f"not a valid internationalised name: {err}",
                "check the spelling, or write the punycode form (xn--...)",
            ) from err
    return name


def _check_name(name: str, *, wildcard: bool) -> None:
    if not name:
        raise LineError("empty host name", "write a host name such as example.com")
    if len(name) > _MAX_NAME:
        raise LineError(
            f"host name is {len(name)} characters; DNS allows at most {_MAX_NAME}",
            "shorten the name or check for a pasting mistake",
        )
    labels = name.split(".")
    for label in labels:
        if not label:
            raise LineError(
                "empty label (two dots in a row, or a leading dot)",
                "remove the extra dot; to allow subdomains write *.example.com",
            )
        if not _LABEL.match(label):
            raise LineError(
                f"label {label!r} is not a host name label "
                "(letters, digits, '-' and '_'; at most 63; no '-' at either end)",
                "write a plain host name such as api.example.com",
            )
    if labels[-1].isdigit():
        # Names like 127.1 or 10.0.1 are read as IPv4 addresses by resolvers (inet_aton).
        raise LineError(
            "the last label is numeric: this is neither a host name nor a dotted-quad IPv4 address",
            "write a full IPv4 address such as 10.0.0.5, or a host name",
        )
    if wildcard and len(labels) < 2:
        raise LineError(
            f"'*.{name}' would allow a whole top-level domain",
            f"name the domain under it, e.g. *.example.{name}",
        )


def _parse_ip(text: str) -> tuple[str, Kind] | None:
    """Return the canonical text and kind if ``text`` is an IP literal."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 4:
        if str(addr) != text:
            raise LineError(
                "IPv4 address not in canonical dotted-quad form",
                f"write it as {addr}",
            )
        return str(addr), "ipv4"
    return addr.compressed, "ipv6"


def parse_entry(text: str) -> Entry:
    """Parse one entry (no comment, no ``!``). Raises :class:`LineError`."""
    if any(ch.isspace() for ch in text):
        raise LineError("more than one entry on the line", "put each entry on its own line")
    if text in {"*", "*.*", ".*", "**", "*.", ".", "*:*"} or text.startswith(("*:", ".*")):
        raise LineError(
            "a bare wildcard would allow every host",
            "list the hosts you need, e.g. *.example.com",
        )
    if "://" in text or text.lower().startswith(("http:", "https:")):
        host = text.split("://", 1)[-1].split("/", 1)[0]
        raise LineError(
            "URLs are not accepted; entries are host names",
            f"write only the host: {host or 'example.com'}",
        )
    if "/" in text:
        head, _, tail = text.partition("/")
        if tail.isdigit() and _parse_ip_quiet(head):
            raise LineError(
                "address ranges (CIDR) are not supported",
                "list each address on its own line",
            )
        raise LineError(
            "a path is not accepted; the proxy filters by host and port",
            f"write only the host: {head or 'example.com'}",
        )
    if "@" in text:
        raise LineError(
            "user info ('user@host') is not accepted",
            f"write only the host: {text.rsplit('@', 1)[-1] or 'example.com'}",
        )
    if _REGEX_CHARS.intersection(text.replace("[", "").replace("]", "")) or (
        "[" in text and not text.startswith("[")
    ):
        raise LineError(
            "regular expressions are not accepted; entries are literal host names",
            "write the host itself, e.g. example.com, or *.example.com for its subdomains",
        )

    port: int | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise LineError("unclosed '[' in an IPv6 literal", "write it as [2001:db8::1]:443")
        inner, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise LineError(
                    "unexpected text after ']'", "write it as [2001:db8::1] or [2001:db8::1]:443"
                )
            port = _parse_port(rest[1:])
        parsed = _parse_ip(inner)
        if parsed is None or parsed[1] != "ipv6":
            raise LineError(
                f"{inner!r} in brackets is not an IPv6 address",
                "brackets are only for IPv6 literals, e.g. [2001:db8::1]",
            )
        return Entry(parsed[0], "ipv6", False, port)

    if text.count(":") > 1:
        parsed = _parse_ip(text)
        if parsed is None:
            raise LineError(
                "not an IPv6 address, and a host takes at most one ':port'",
                "write host:port, or an IPv6 literal as [2001:db8::1]:443",
            )
        return Entry(parsed[0], "ipv6", False, None)

    host_text = text
    if ":" in text:
        host_text, port_text = text.rsplit(":", 1)
        port = _parse_port(port_text)

    wildcard = False
    if host_text.startswith("*."):
        wildcard = True
        host_text = host_text[2:]
    if "*" in host_text:
        raise LineError(
            "'*' is allowed only as the whole first label",
            "write *.example.com to allow every subdomain of example.com",
        )

    parsed = _parse_ip(host_text)
    if parsed is not None:
        if wildcard:
            raise LineError(
                "a wildcard cannot precede an IP address", f"write the address alone: {host_text}"
            )
        return Entry(parsed[0], parsed[1], False, port)

    name = _normalise_name(host_text)
    _check_name(name, wildcard=wildcard)
    return Entry(name, "name", wildcard, port)


def _parse_ip_quiet(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_line(raw: str, source: Source) -> Entry | Removal | None:
    """Parse one line. ``None`` for blank and comment lines. Raises :class:`LineError`."""
    text = _strip_comment(raw)
    if not text:
        return None
    if text.startswith("!"):
        rest = text[1:].strip()
        if not rest:
            raise LineError("'!' with nothing after it", "write !host to drop an inherited entry")
        target = parse_entry(rest)
        return Removal(
            Entry(target.host, target.kind, target.wildcard, target.port, source), source
        )
    entry = parse_entry(text)
    return Entry(entry.host, entry.kind, entry.wildcard, entry.port, source)


Item = Entry | Removal


def parse_text(text: str, path: str) -> tuple[list[Item], list[Problem]]:
    """Parse a whole file's text. Every bad line is reported, none is dropped silently."""
    items: list[Item] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        source = Source(path, number)
        if "\x00" in raw:
            problems.append(Problem(source, raw, "NUL byte in the line", "remove it"))
            continue
        try:
            item = parse_line(raw, source)
        except LineError as err:
            problems.append(Problem(source, _strip_comment(raw), err.reason, err.fix))
            continue
        if item is not None:
            items.append(item)
    return items, problems


def read_file(path: Path) -> str:
    if path.is_dir():
        raise IsofeatError(f"{path}: is a folder, not a whitelist file", fix="name the file in it")
    if path.exists() and not path.is_file():
        # A FIFO would block the read for ever, a device never end it.
        raise IsofeatError(f"{path}: not a regular file", fix="give a whitelist file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IsofeatError(
            f"{path}: whitelist file not found", fix="check the path, or create the file"
        ) from None
    except UnicodeDecodeError as err:
        raise IsofeatError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start})",
            fix="save the file as UTF-8",
        ) from None
    except OSError as err:
        raise IsofeatError(
            f"{path}: cannot read: {err.strerror}", fix="check permissions"
        ) from None


def builtin_text(name: str) -> str:
    if name not in BUILTIN_LISTS:
        raise IsofeatError(
            f"unknown built-in list {name!r}", fix=f"use one of: {', '.join(BUILTIN_LISTS)}"
        )
    # Package data next to this module (cheaper to reach than importlib.resources).
    return (Path(__file__).parent / "whitelists" / f"{name}.txt").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- layers and policy


@dataclass(frozen=True)
class Layer:
    """One whitelist source, in merge order."""

    label: str  # a path, or "builtin:sandbox"
    text: str


def global_file(kind: str, environ: Mapping[str, str]) -> Path:
    """The user's global whitelist for ``kind`` ("sandbox" or "dind")."""
    from isofeat.envvars import global_whitelist

    return global_whitelist(kind, environ)


def collect_layers(
    files: Sequence[Path],
    *,
    defaults: str | None,
    include_global: bool,
    environ: Mapping[str, str],
) -> list[Layer]:
    """Layers in the documented order: built-in defaults, the user's global file, then ``files``."""
    layers: list[Layer] = []
    if defaults:
        layers.append(Layer(f"builtin:{defaults}", builtin_text(defaults)))
        if include_global:
            path = global_file(defaults, environ)
            if path.is_file():
                layers.append(Layer(str(path), read_file(path)))
    layers.extend(Layer(str(path), read_file(path)) for path in files)
    return layers


@dataclass(frozen=True)
class Decision:
    allowed: bool
    host: str
    port: int
    mode: Mode
    rule: Entry | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {
            "allowed": self.allowed,
            "host": self.host,
            "port": self.port,
            "mode": self.mode,
            "rule": str(self.rule) if self.rule else None,
            "source": str(self.rule.source) if self.rule else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Policy:
    """The merged whitelist: what is allowed, plus what was removed (to explain denials)."""

    entries: tuple[Entry, ...]
    removed: tuple[tuple[Entry, Removal], ...] = ()

    def connect_ports(self) -> list[int]:
        return sorted({entry.ports("connect") for entry in self.entries})

    def decide(self, host: str, port: int, mode: Mode) -> Decision:
        """Would the proxy let a request for ``host:port`` through? ``host`` as on the wire."""
        wire = _ascii_lower(host)
        matching = [entry for entry in self.entries if _matches(entry, wire)]
        for entry in matching:
            if entry.ports(mode) == port:
                return Decision(
                    True, host, port, mode, entry, f"allowed by {entry} ({entry.source})"
                )
        if matching:
            first = matching[0]
            ports = ", ".join(str(p) for p in sorted({e.ports(mode) for e in matching}))
            return Decision(
                False,
                host,
                port,
                mode,
                first,
                f"denied: {first} ({first.source}) allows {mode.upper()} on port {ports} only, "
                f"not {port}",
            )
        for entry, removal in self.removed:
            if _matches(entry, wire):
                return Decision(
                    False,
                    host,
                    port,
                    mode,
                    None,
                    f"denied: {entry} ({entry.source}) was removed by !{removal.target} "
                    f"({removal.source})",
                )
        return Decision(False, host, port, mode, None, "denied: no rule matches (default deny)")


def _matches(entry: Entry, wire: str) -> bool:
    """Match a wire host; IPv6 literals are on the wire in brackets, entries hold them bare."""
    if entry.kind == "ipv6":
        return wire.startswith("[") and wire.endswith("]") and entry.matches_host(wire[1:-1])
    return entry.matches_host(wire)


def _ascii_lower(text: str) -> str:
    # The proxy folds case with REG_ICASE in the C locale: ASCII letters only.
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def merge(layers: Iterable[Layer]) -> Policy:
    """Merge ``layers`` in order. Any bad line anywhere stops the merge: nothing is widened."""
    problems: list[Problem] = []
    parsed: list[list[Item]] = []
    for layer in layers:
        items, bad = parse_text(layer.text, layer.label)
        problems.extend(bad)
        parsed.append(items)
    if problems:
        raise WhitelistError(problems)

    entries: dict[tuple[str, bool, int | None], Entry] = {}
    removed: dict[tuple[str, bool, int | None], tuple[Entry, Removal]] = {}
    for items in parsed:
        for item in items:
            if isinstance(item, Removal):
                key = item.target.key
                if item.target.port is None:
                    # "!host" drops the host on every port; "!host:8443" only that port.
                    keys = [k for k in entries if k[:2] == key[:2]]
                else:
                    keys = [key] if key in entries else []
                for k in keys:
                    removed[k] = (entries.pop(k), item)
            else:
                entries.setdefault(item.key, item)
                removed.pop(item.key, None)
    return Policy(tuple(entries.values()), tuple(removed.values()))


class WhitelistError(IsofeatError):
    """One or more bad lines; the message lists each with file:line, reason and fix."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} bad whitelist line(s); nothing was applied:",
            lines=[line for p in self.problems for line in p.lines()],
        )


def load_policy(
    files: Sequence[Path],
    *,
    defaults: str | None,
    include_global: bool,
    environ: Mapping[str, str],
) -> Policy:
    return merge(
        collect_layers(files, defaults=defaults, include_global=include_global, environ=environ)
    )


_WIRE_HOST = re.compile(r"[A-Za-z0-9_.-]+\Z")
_TARGET_FIX = "write HOST or HOST:PORT, e.g. api.github.com, api.github.com:8443, [2001:db8::1]:443"


def parse_target(text: str, mode: Mode) -> tuple[str, int]:
    """Split a ``HOST[:PORT]`` argument of ``whitelist check`` into the wire host and port.

    The host is taken as a request would carry it (``github.com.`` stays distinct, so that
    the answer is the proxy's), but anything no request could name is bad input (exit 2),
    never a quiet "denied": a URL, a path, a wildcard rule, an empty or spaced name.
    """

    def bad(reason: str, fix: str = _TARGET_FIX) -> IsofeatError:
        return IsofeatError(f"whitelist check {text!r}: {reason}", fix=fix)

    if not text:
        raise bad("empty HOST")
    if not text.isprintable() or any(ch.isspace() for ch in text):
        raise bad("HOST holds a space or a control character")
    if "://" in text:
        host = text.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        raise bad("a URL, not HOST[:PORT]", fix=f"write only the host: {host or 'example.com'}")
    if "/" in text:
        raise bad("a path is not part of HOST[:PORT]; the proxy decides by host and port",
                  fix=f"write only the host: {text.split('/', 1)[0] or 'example.com'}")
    if "@" in text:
        raise bad("user info ('user@host') is not part of HOST[:PORT]",
                  fix=f"write only the host: {text.rsplit('@', 1)[-1] or 'example.com'}")
    if "*" in text:
        raise bad("a wildcard is a whitelist rule, not a host a request can name",
                  fix="check one concrete name, e.g. api.github.com")
    host, port_text = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise bad("unclosed '[' in an IPv6 literal", fix="write [2001:db8::1]:443")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise bad("unexpected text after ']'", fix="write [2001:db8::1]:443")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad(f"{host[1:-1]!r} in brackets is not an IPv6 address",
                      fix="brackets are only for IPv6 literals, e.g. [2001:db8::1]:443") from None
    elif text.count(":") > 1:
        if not _parse_ip_quiet(text):
            raise bad("not an IPv6 address, and a host takes at most one ':PORT'")
        host = f"[{text}]"
    elif ":" in text:
        host, port_text = text.split(":")
    if port_text is not None:
        if not port_text:
            raise bad("':' with no port after it", fix=f"write {host or 'HOST'}:443, or drop ':'")
        try:
            port = _parse_port(port_text)
        except LineError as err:
            raise bad(err.reason, fix=err.fix) from None
    else:
        port = DEFAULT_PORTS[mode]
    if not host:
        raise bad("empty HOST before ':'")
    if host.startswith("["):
        return host, port
    if not host.isascii():
        try:
            host = _normalise_name(host)
        except LineError as err:
            raise bad(err.reason, fix=err.fix) from None
    if not _WIRE_HOST.match(host):
        raise bad("not a host name (letters, digits, '-', '_' and '.' only)",
                  fix=f"{_TARGET_FIX}; regular expressions are not accepted")
    if len(host.rstrip(".")) > _MAX_NAME:
        raise bad(f"host name is {len(host)} characters; DNS allows at most {_MAX_NAME}",
                  fix="shorten the name or check for a pasting mistake")
    if "" in host.removesuffix(".").split("."):
        raise bad("empty label (two dots in a row, or a leading dot)",
                  fix="remove the extra dot")
    return host, port

"""Compile a :class:`~isofeat.whitelist.Policy` into a tinyproxy 1.11 config and filter.

Why it looks the way it does (each point measured on Debian's tinyproxy 1.11.1):

* ``FilterURLs On`` makes the filter see ``http://host[:port]/path`` for plain HTTP and
  ``host:port`` for CONNECT, so one anchored rule decides host *and* port for both. In domain
  mode the filter sees only the host, and ``ConnectPort`` limits CONNECT alone: plain HTTP
  to any port would pass.
* The filter is an unanchored regex, so every rule is written ``^...$`` (CONNECT) or
  ``^http://host/`` (HTTP) with every dot escaped. The HTTP rule requires ``/`` right after
  the authority: tinyproxy takes the host to be everything up to the first ``/`` and strips
  ``user@``, so ``http://github.com@evil.test/`` and ``http://github.com?@evil.test/`` must not
  match a ``github.com`` rule.
* Debian builds tinyproxy with transparent proxying: a relative request (``GET /``) is
  rebuilt from the ``Host`` header as ``http://HOST:PORT/PATH`` and only then filtered, and
  HOST may hold a ``/`` (``Host: github.com/.evil.test`` gives
  ``http://github.com/.evil.test:80/``). Two guards close that path in the filter itself,
  instead of trusting glibc to refuse such a name: port 80 matches only in the port-less form,
  and after the authority an HTTP rule admits no ``:`` followed by a digit, which every
  rebuilt URL has. The cost: a plain-HTTP URL whose path or query holds ``:<digit>`` is
  denied (HTTPS is not affected).
* ``FilterType ere`` must be lower case: 1.11.1 silently reads ``ERE`` as BRE.
* Tinyproxy cuts a filter line at the first space or ``#``; rules contain neither. It also
  reads the filter in 512-byte chunks, so a longer line would become two rules, the second
  unanchored: :data:`MAX_RULE_BYTES` is enforced (the longest legal name gives 424).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from isofeat import __version__
from isofeat.errors import IsofeatError
from isofeat.whitelist import Entry, LineError, Policy, collect_layers, merge, parse_entry

#: Where the proxy image expects the rendered folder (mounted read-only).
CONTAINER_CONF_DIR = "/etc/isofeat/proxy"
CONF_NAME = "tinyproxy.conf"
FILTER_NAME = "filter"
PORT = 8888
#: Never whitelisted; the image's healthcheck expects a 403 for it.
HEALTHCHECK_HOST = "isofeat-healthcheck.invalid"
#: A rule that can match no request: an empty whitelist still yields a non-empty filter,
#: because the image refuses to start on an empty one (a sign of a broken render).
DENY_ALL_RULE = r"^isofeat-deny-all\.invalid:0$"

MAX_RULE_BYTES = 511
_ERE_SPECIAL = set(".[]()*+?{}|^$\\")
# A label as it may appear on the wire; glibc's resolver refuses anything else.
_WILDCARD_PREFIX = "([a-z0-9_-]+\\.)+"
# The rest of an HTTP URL: anything but ':' followed by a digit (see the module docstring).
_HTTP_PATH = "([^:]|:[^0-9])*"


def ere_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _ERE_SPECIAL else ch for ch in text)


def _host_regex(entry: Entry) -> str:
    return (_WILDCARD_PREFIX if entry.wildcard else "") + ere_escape(entry.wire_host)


def _comment(text: str) -> str:
    """A comment line; control characters in paths must not start a new (rule) line."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    return f"# {clean}"[: MAX_RULE_BYTES // 2]


def rules_for(entry: Entry) -> list[str]:
    """The two filter rules for one entry: plain HTTP and CONNECT."""
    host = _host_regex(entry)
    http_port = entry.ports("http")
    authority = host if http_port == 80 else f"{host}:{http_port}"
    http = f"^http://{authority}/{_HTTP_PATH}$"
    connect = f"^{host}:{entry.ports('connect')}$"
    return [http, connect]


@dataclass(frozen=True)
class Upstream:
    scheme: str  # "socks5", "socks4" or "http"
    host: str
    port: int
    userinfo: str = ""

    def directive(self) -> str:
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return f"Upstream {self.scheme} {auth}{self.host}:{self.port}"


def parse_upstream(url: str) -> Upstream:
    """Read ``socks5://[user:pass@]host:port`` or ``http://...`` into an :class:`Upstream`."""
    fix = "write it as socks5://HOST:PORT or http://HOST:PORT"
    parts = urlsplit(url)
    if parts.scheme not in {"socks5", "socks4", "http"}:
        raise IsofeatError(f"upstream proxy {url!r}: unsupported scheme {parts.scheme!r}", fix=fix)
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise IsofeatError(f"upstream proxy {url!r}: a proxy URL has no path or query", fix=fix)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise IsofeatError(f"upstream proxy {url!r}: needs a host and a port", fix=fix)
    if not 1 <= port <= 65535:
        raise IsofeatError(f"upstream proxy {url!r}: port {port} is out of range", fix=fix)
    for ch in url:
        if ch.isspace() or ch in '"#':
            raise IsofeatError(
                f"upstream proxy {url!r}: spaces, quotes and '#' are not allowed",
                fix="percent-encode them in the user name or password",
            )
    userinfo = ""
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        if ":" in user or "@" in user + password:
            raise IsofeatError(
                f"upstream proxy {url!r}: ':' or '@' in the credentials",
                fix="tinyproxy cannot carry these characters; choose other credentials",
            )
        userinfo = f"{user}:{password}" if parts.password is not None else user
    return Upstream(parts.scheme, parts.hostname, port, userinfo)


def _check_no_upstream(domain: str) -> str:
    try:
        entry = parse_entry(domain.removeprefix("."))
    except LineError as err:
        raise IsofeatError(f"--no-upstream {domain!r}: {err.reason}", fix=err.fix) from None
    if entry.port is not None:
        raise IsofeatError(f"--no-upstream {domain!r}: takes no port", fix="drop ':PORT'")
    # Tinyproxy reads a leading dot as "this domain and its subdomains".
    return ("." if domain.startswith(".") or entry.wildcard else "") + entry.host


def _check_cidr(cidr: str) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        raise IsofeatError(
            f"--allow-client {cidr!r} is not an address or CIDR range",
            fix="write it like 172.30.0.0/16 or 10.0.0.7",
        ) from None


@dataclass(frozen=True)
class Rendered:
    conf: str
    filter: str
    connect_ports: list[int]
    rule_count: int
    #: The conf holds upstream credentials (``Upstream socks5 user:pass@...``).
    secret: bool = False


def render(
    policy: Policy,
    *,
    layers: Sequence[str],
    upstream: str | None = None,
    no_upstream: Sequence[str] = (),
    allow_clients: Sequence[str] = (),
    max_clients: int = 100,
    conf_dir: str = CONTAINER_CONF_DIR,
    broker_hosts: Sequence[str] = (),
) -> Rendered:
    """Return the text of ``tinyproxy.conf`` and of the filter for ``policy``."""
    if not 1 <= max_clients <= 10000:
        raise IsofeatError(f"--max-clients {max_clients}: out of range", fix="use 1 to 10000")
    up = parse_upstream(upstream) if upstream else None
    if broker_hosts and up is not None:
        raise IsofeatError(
            "secrets are bound (isofeat secrets) and an upstream proxy is set: the credential "
            "broker cannot reach its hosts through the upstream proxy yet",
            fix="remove the upstream from isofeat.json, or the secrets (isofeat secrets rm)",
        )
    if no_upstream and up is None:
        raise IsofeatError("--no-upstream needs --upstream", fix="add --upstream URL or drop it")
    direct = [_check_no_upstream(d) for d in no_upstream]
    clients = [_check_cidr(c) for c in allow_clients]

    filter_lines = [
        f"# isofeat {__version__} egress filter: generated, do not edit.",
        "# Each entry gives one rule for plain HTTP and one for CONNECT; all else is denied.",
    ]
    rule_count = 0
    for entry in policy.entries:
        filter_lines.append(_comment(f"{entry}  ({entry.source})"))
        for rule in rules_for(entry):
            if len(rule.encode()) > MAX_RULE_BYTES:
                raise IsofeatError(
                    f"{entry.source}: {entry} compiles to a {len(rule)}-byte rule; tinyproxy "
                    f"splits filter lines over {MAX_RULE_BYTES} bytes",
                    fix="use a shorter name",
                )
            filter_lines.append(rule)
            rule_count += 1
    if rule_count == 0:
        filter_lines.append("# The whitelist is empty: every request is denied.")
        filter_lines.append(DENY_ALL_RULE)
    ports = policy.connect_ports() or [443]

    conf = [
        f"# isofeat {__version__} tinyproxy config: generated, do not edit.",
        _comment(f"Whitelist layers, in merge order: {', '.join(layers) or '(none)'}"),
        "# Regenerate with `isofeat proxy render`; apply with `isofeat proxy reload`.",
        f"Port {PORT}",
        "Listen 0.0.0.0",
        "Timeout 600",
        f"MaxClients {max_clients}",
        # Info logs every request and every refusal; `isofeat egress log` reads them.
        "LogLevel Info",
        # Do not advertise the proxy to servers.
        "DisableViaHeader Yes",
        "FilterType ere",
        "FilterURLs On",
        "FilterCaseSensitive Off",
        "FilterDefaultDeny Yes",
        f'Filter "{conf_dir}/{FILTER_NAME}"',
    ]
    conf += [f"ConnectPort {port}" for port in ports]
    # No Allow line means "allow every client" in tinyproxy; list them when asked.
    conf += [f"Allow {cidr}" for cidr in clients]
    if broker_hosts:
        # Only these names go to the credential broker (docs/secrets.md); tinyproxy's filter
        # above still decides first, and every other host is relayed as before.
        from isofeat.broker import upstream_lines

        conf.append("# Bound hosts: relayed through the credential broker.")
        conf += upstream_lines(broker_hosts)
    if up is not None:
        conf += [f'Upstream none "{domain}"' for domain in direct]
        conf.append(up.directive())
    return Rendered(
        "\n".join(conf) + "\n", "\n".join(filter_lines) + "\n", ports, rule_count,
        secret=up is not None and bool(up.userinfo),
    )


#: Modes of a private render: only its owner, the uid the proxy runs as, may read it.
def render_layers(
    files: Sequence[Path],
    *,
    defaults: str | None,
    include_global: bool,
    environ: Mapping[str, str] = os.environ,
    upstream: str | None = None,
    no_upstream: Sequence[str] = (),
    allow_clients: Sequence[str] = (),
    max_clients: int = 100,
    broker_hosts: Sequence[str] = (),
) -> tuple[Policy, list[str], Rendered]:
    """Collect the whitelist layers, merge them and render: the one pipeline behind both
    ``isofeat init`` and ``isofeat proxy render``. Returns the policy, the layers' labels and
    the render."""
    layers = collect_layers(
        files, defaults=defaults, include_global=include_global, environ=environ
    )
    policy = merge(layers)
    labels = [layer.label for layer in layers]
    rendered = render(
        policy, layers=labels, upstream=upstream, no_upstream=no_upstream,
        allow_clients=allow_clients, max_clients=max_clients, broker_hosts=broker_hosts,
    )
    return policy, labels, rendered


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def write(
    rendered: Rendered, out: Path, *, private: bool | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write both files atomically; the proxy never sees a half-written config.

    ``private`` (default: when the conf holds upstream credentials) makes ``out`` 0700 and
    both files 0600, owned by ``owner`` (uid, gid; default: whoever runs this). The proxy
    container must then run as that uid: it reads the folder through a bind mount, and a
    secret must not be readable by every local user or by other containers' uids. Without
    a secret the files stay 0644, readable by the image's own ``tinyproxy`` user.
    """
    from isofeat.atomic import write_text

    if private is None:
        private = rendered.secret
    mode = PRIVATE_FILE_MODE if private else 0o644
    if private:
        # Tighten the folder before the secret lands in it, and before it exists.
        out.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        out.chmod(PRIVATE_DIR_MODE)
        if owner is not None:
            os.chown(out, *owner)
    # Filter first: a reload that reads the new conf must find the new filter too.
    write_text(out / FILTER_NAME, rendered.filter, mode=mode, owner=owner)
    write_text(out / CONF_NAME, rendered.conf, mode=mode, owner=owner)

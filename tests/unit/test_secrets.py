"""``isofeat secrets`` and the broker's per-environment render, through the real CLI.

The file backend is forced (``ISOFEAT_SECRETS_BACKEND=file``) and HOME is a temporary
folder: the user's keyring is never touched.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from isofeat.cli import main

VALUE = "sk-ant-api03-REAL-0123456789abcdef"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("ISOFEAT_SECRETS_BACKEND", "file")
    # What `isofeat image build` leaves: the base image's CA bundle.
    bundle = tmp_path / "state" / "isofeat" / "base-ca-bundle.pem"
    bundle.parent.mkdir(parents=True)
    bundle.write_text("# the base image's bundle\n")
    return tmp_path


def set_secret(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(value + "\n"))
    return main(["secrets", "set", name])


def project(root: Path, settings: dict[str, object] | None = None) -> Path:
    (root / ".devcontainer").mkdir(parents=True)
    (root / ".devcontainer" / "whitelist.txt").write_text("")
    if settings is not None:
        (root / ".devcontainer" / "isofeat.json").write_text(json.dumps(settings))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def env_of(ws: Path) -> dict[str, str]:
    lines = (ws / ".devcontainer" / ".env").read_text().splitlines()
    return {k: v.strip("'") for k, v in (ln.split("=", 1) for ln in lines
                                         if ln and not ln.startswith("#"))}


def test_set_list_rm_keep_the_value_private_and_never_print_it(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert set_secret(monkeypatch, "ANTHROPIC_API_KEY", VALUE) == 0
    folder = home / "config" / "isofeat" / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = folder / "values.json"
    assert stat.S_IMODE(values.stat().st_mode) == 0o600
    assert json.loads(values.read_text()) == {"ANTHROPIC_API_KEY": VALUE}  # newline stripped
    assert VALUE not in (folder / "index.json").read_text()
    assert main(["secrets", "list"]) == 0
    assert main(["secrets", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert VALUE not in out + err
    assert "ANTHROPIC_API_KEY" in out and "set (file)" in out and "api.anthropic.com" in out
    assert main(["secrets", "rm", "ANTHROPIC_API_KEY"]) == 0
    assert json.loads(values.read_text()) == {}
    assert main(["secrets", "rm", "ANTHROPIC_API_KEY"]) == 2


@pytest.mark.parametrize("value", ["two\nlines", "tab\there", "", "caf\u00e9"])
def test_a_value_no_header_can_carry_is_refused_without_being_shown(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert set_secret(monkeypatch, "OPENAI_API_KEY", value) == 2
    err = capsys.readouterr().err
    assert "fix:" in err and (not value or value not in err)
    assert not (home / "config" / "isofeat" / "secrets" / "values.json").exists()


def test_a_bad_name_is_exit_2(home: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert set_secret(monkeypatch, "lower-case", VALUE) == 2
    assert "fix:" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "line", "words"), [
    ('{"bindings": [\n {"secret": "MY_TOKEN",\n  "hosts": ["api.example.com"],\n'
     '  "header": "x api key"}\n]}\n', 4, "header"),
    ('{"bindings": [\n {"secret": "MY_TOKEN",\n  "hosts": ["https://api.example.com/"],\n'
     '  "header": "Authorization"}\n]}\n', 3, "hosts"),
    ('{"bindings": [\n {"secret": "MY_TOKEN", "hosts": ["a.example.com"],\n'
     '  "header": "Host"}\n]}\n', 2, "frames"),
    ('{"bindings": [\n {"secret": "MY_TOKEN", "hosts": ["a.example.com"],\n'
     '  "header": "x-k", "extra": 1}\n]}\n', 2, "extra"),
    ('{"bindings": [\n {"secret": "MY_TOKEN", "hosts": ["a.example.com"],\n'
     '  "header": "x-k",}\n]}\n', 3, "not valid JSON"),
    ('{"bindings": [\n {"secret": "MY_TOKEN", "hosts": ["a.example.com"], "header": "x-k",\n'
     '  "methods": ["get"]}\n]}\n', 3, "methods"),
    ('{"bindings": [\n {"secret": "MY_TOKEN", "hosts": ["a.example.com"], "header": "x-k",\n'
     '  "paths": ["repos/*"]}\n]}\n', 3, "paths"),
])
def test_a_bad_bindings_file_is_exit_2_with_file_line_and_fix(
    home: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, words: str
) -> None:
    path = home / "config" / "isofeat" / "bindings.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert main(["secrets", "list"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:" in err, err
    assert words in err and "fix:" in err


def test_a_user_binding_is_listed_and_replaces_a_built_in_one(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = home / "config" / "isofeat" / "bindings.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"bindings": [
        {"secret": "GITHUB_TOKEN", "hosts": ["ghe.example.com"], "header": "Authorization",
         "env": ["GH_TOKEN"]},
        {"secret": "MY_TOKEN", "hosts": ["api.example.com:8443"], "header": "X-Token"}]}))
    assert main(["secrets", "list", "--json"]) == 0
    rows = {r["secret"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["GITHUB_TOKEN"]["hosts"] == ["ghe.example.com"]
    assert rows["MY_TOKEN"]["header"] == "x-token" and rows["MY_TOKEN"]["env"] == ["MY_TOKEN"]


def test_init_without_secrets_starts_no_broker_and_imports_nothing_heavy(
    home: Path, tmp_path: Path
) -> None:
    ws = project(tmp_path / "p")
    code = ("import sys; from isofeat.cli import main; rc = main(['init', '-q', sys.argv[1]]);"
            "heavy = [m for m in ('keyring', 'cryptography', 'jsonschema') if m in sys.modules];"
            "print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(ws)], capture_output=True, text=True,
                         check=True, env=dict(os.environ)).stdout
    assert out.strip() == "0 []", out
    env = env_of(ws)
    assert env["ISOFEAT_BROKER_SCALE"] == "0"
    assert "Upstream" not in (Path(env["ISOFEAT_PROXY_CONF"]) / "tinyproxy.conf").read_text()
    assert "=" not in Path(env["ISOFEAT_SECRETS_ENV"]).read_text()
    assert not (Path(env["ISOFEAT_BROKER_CONF"]) / "bindings.json").exists()


def test_init_with_a_secret_renders_the_broker_once_and_dev_sees_a_placeholder(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cryptography import x509

    assert set_secret(monkeypatch, "ANTHROPIC_API_KEY", VALUE) == 0
    ws = project(tmp_path / "p")
    assert main(["init", "-q", str(ws)]) == 0
    env = env_of(ws)
    assert env["ISOFEAT_BROKER_SCALE"] == "1"
    broker, trust = Path(env["ISOFEAT_BROKER_CONF"]), Path(env["ISOFEAT_TRUST_DIR"])
    assert stat.S_IMODE(broker.stat().st_mode) == 0o700
    for name in ("bindings.json", "ca.pem"):
        assert stat.S_IMODE((broker / name).stat().st_mode) == 0o600
    record = json.loads((broker / "bindings.json").read_text())["bindings"][0]
    assert (record["host"], record["port"], record["header"], record["value"]) == (
        "api.anthropic.com", 443, "x-api-key", VALUE)
    placeholder = record["placeholder"]
    dev_env = Path(env["ISOFEAT_SECRETS_ENV"]).read_text()
    assert f"ANTHROPIC_API_KEY={placeholder}" in dev_env and VALUE not in dev_env
    assert "SSL_CERT_FILE=/run/isofeat/trust/ca-bundle.pem" in dev_env
    # The agent's side: no value, no key; the bundle is the base's plus this CA.
    for path in [*trust.iterdir(), ws / ".devcontainer" / ".env"]:
        text = path.read_text()
        assert VALUE not in text and "PRIVATE KEY" not in text
    bundle = (trust / "ca-bundle.pem").read_text()
    assert bundle.startswith("# the base image's bundle") and bundle.endswith(
        (trust / "ca-cert.pem").read_text())
    cert = x509.load_pem_x509_certificate((trust / "ca-cert.pem").read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert [n.value for n in constraints.permitted_subtrees or []] == ["api.anthropic.com"]
    conf = (Path(env["ISOFEAT_PROXY_CONF"]) / "tinyproxy.conf").read_text()
    assert 'Upstream http broker:8080 "api.anthropic.com"' in conf
    # Idempotent: the second open changes nothing, the CA and the placeholder are kept.
    files = [broker / "ca.pem", broker / "bindings.json", trust / "ca-bundle.pem",
             Path(env["ISOFEAT_SECRETS_ENV"]), ws / ".devcontainer" / ".env"]
    stamps = [p.stat().st_mtime_ns for p in files]
    assert main(["init", "-q", str(ws)]) == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps
    # Removing the secret takes the real value away from the broker's folder.
    assert main(["secrets", "rm", "ANTHROPIC_API_KEY"]) == 0
    assert main(["init", "-q", str(ws)]) == 0
    assert env_of(ws)["ISOFEAT_BROKER_SCALE"] == "0"
    assert not (broker / "bindings.json").exists()
    assert "Upstream" not in (Path(env["ISOFEAT_PROXY_CONF"]) / "tinyproxy.conf").read_text()
    capsys.readouterr()


def test_secrets_and_an_upstream_proxy_together_are_exit_2(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert set_secret(monkeypatch, "OPENAI_API_KEY", VALUE) == 0
    ws = project(tmp_path / "p", {"upstream": "socks5://host.docker.internal:1080"})
    assert main(["init", "-q", str(ws)]) == 2
    assert "upstream" in capsys.readouterr().err


def test_the_keyring_backend_keeps_the_value_out_of_isofeats_files(
    home: Path, tmp_path: Path
) -> None:
    """`secrets set|list|rm` and `init` through a real keyring backend.

    No OS keyring answers on a headless CI machine, so keyring's own plugin mechanism
    (PYTHON_KEYRING_BACKEND) selects keyrings.alt's file backend, kept under this test's
    XDG_DATA_HOME. isofeat's code path is the keyring one: the value goes through
    keyring.set_password/get_password, and isofeat's own files hold only the name.
    """
    pytest.importorskip("keyrings.alt")
    environ = {**os.environ, "ISOFEAT_SECRETS_BACKEND": "keyring",
               "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
               "XDG_DATA_HOME": str(tmp_path / "data")}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "isofeat", *args], input=stdin, env=environ,
                              capture_output=True, text=True, check=False)  # fmt: skip

    done = cli("secrets", "set", "ANTHROPIC_API_KEY", stdin=VALUE + "\n")
    assert done.returncode == 0, done.stderr
    assert VALUE not in done.stdout + done.stderr
    secrets = home / "config" / "isofeat" / "secrets"
    index = json.loads((secrets / "index.json").read_text())
    assert index["secrets"] == {"ANTHROPIC_API_KEY": "keyring"}
    assert not (secrets / "values.json").exists()
    kept = list((tmp_path / "data").rglob("*.cfg"))
    assert kept, "the keyring backend stored nothing"
    listed = cli("secrets", "list")
    assert listed.returncode == 0 and "ANTHROPIC_API_KEY" in listed.stdout
    assert VALUE not in listed.stdout + listed.stderr
    # init reads it back through keyring and gives it to the broker alone.
    ws = project(tmp_path / "p")
    done = cli("init", "-q", str(ws))
    assert done.returncode == 0, done.stderr
    env = env_of(ws)
    record = json.loads((Path(env["ISOFEAT_BROKER_CONF"]) / "bindings.json").read_text())
    assert record["bindings"][0]["value"] == VALUE
    assert VALUE not in Path(env["ISOFEAT_SECRETS_ENV"]).read_text()
    # rm takes it out of the keyring too: the backend's entries under isofeat's service.
    import configparser

    def entries() -> int:
        count = 0
        for cfg in kept:
            parser = configparser.ConfigParser()
            parser.read(cfg)
            count += sum(len(parser[s]) for s in parser.sections() if "isofeat" in s)
        return count

    assert entries() == 1
    assert cli("secrets", "rm", "ANTHROPIC_API_KEY").returncode == 0
    assert entries() == 0


def test_a_file_keyring_is_not_taken_for_an_os_keyring(home: Path, tmp_path: Path) -> None:
    """keyrings.alt's plain-text file (priority 0.5) is no safer than isofeat's own 0600 file,
    whose mode isofeat checks: without ISOFEAT_SECRETS_BACKEND the file backend is chosen."""
    pytest.importorskip("keyrings.alt")
    environ = {k: v for k, v in os.environ.items() if k != "ISOFEAT_SECRETS_BACKEND"}
    environ.update(PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
                   XDG_DATA_HOME=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-m", "isofeat", "secrets", "set", "GEMINI_API_KEY"],
                          input=VALUE + "\n", env=environ, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    index = json.loads((home / "config" / "isofeat" / "secrets" / "index.json").read_text())
    assert index["secrets"] == {"GEMINI_API_KEY": "file"}
    assert not list((tmp_path / "data").rglob("*.cfg"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_non_root_user_sets_a_secret_and_opens_with_the_broker_as_themself(
    tmp_path: Path,
) -> None:
    """As an ordinary user (uid 65534 here, in group 2000): the broker's files are theirs and
    0600, and the broker runs as them (root would hand them to the broker's own uid)."""
    import tempfile

    uid = gid = 65534
    # pytest's own folders are root's alone (0700): this user needs a path it may walk.
    root = Path(tempfile.mkdtemp(prefix="isofeat-non-root-"))
    try:
        _non_root_open(root, uid, gid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _non_root_open(root: Path, uid: int, gid: int) -> None:
    root.chmod(0o755)
    (root / "state" / "isofeat").mkdir(parents=True)
    (root / "state" / "isofeat" / "base-ca-bundle.pem").write_text("# base bundle\n")
    ws = project(root / "p")
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(root)], check=True)
    environ = {"PATH": os.environ["PATH"], "HOME": str(root / "home"),
               "XDG_STATE_HOME": str(root / "state"), "XDG_CONFIG_HOME": str(root / "config"),
               "ISOFEAT_SECRETS_BACKEND": "file", "PYTHONDONTWRITEBYTECODE": "1"}
    # In group dev (2000), as docs/template.md asks of the host user.
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--groups=2000", sys.executable,
               "-m", "isofeat"]
    reach = subprocess.run([*as_user[:-2], "-c", "import isofeat"], env=environ,
                           capture_output=True, text=True, check=False)  # fmt: skip
    if reach.returncode != 0:  # a checkout in a folder only root may enter
        pytest.skip(f"uid {uid} cannot run this checkout's isofeat: {reach.stderr[-200:]}")

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *args], input=stdin, env=environ, cwd=ws,
                              capture_output=True, text=True, check=False)  # fmt: skip

    assert cli("secrets", "set", "OPENAI_API_KEY", stdin=VALUE + "\n").returncode == 0
    done = cli("init", "-q", str(ws))
    assert done.returncode == 0, done.stderr
    env = env_of(ws)
    assert env["ISOFEAT_BROKER_USER"] == f"{uid}:{gid}"
    assert env["ISOFEAT_PROXY_USER"] == f"{uid}:{gid}"
    broker = Path(env["ISOFEAT_BROKER_CONF"])
    for path in (broker, *broker.iterdir()):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), path
        assert stat.S_IMODE(st.st_mode) == (0o700 if path.is_dir() else 0o600), path
    record = json.loads((broker / "bindings.json").read_text())["bindings"][0]
    assert record["value"] == VALUE and record["host"] == "api.openai.com"
    dev_env = Path(env["ISOFEAT_SECRETS_ENV"]).read_text()
    assert f"CODEX_API_KEY={record['placeholder']}" in dev_env and VALUE not in dev_env
    # A bindings file this user may not read: exit 2 naming it, no traceback.
    bindings = root / "config" / "isofeat" / "bindings.json"
    bindings.write_text('{"bindings": []}\n')
    bindings.chmod(0o600)  # root's, as written by this test
    denied = cli("secrets", "list")
    assert denied.returncode == 2 and f"{bindings}: cannot read" in denied.stderr, denied.stderr
    assert "Traceback" not in denied.stderr

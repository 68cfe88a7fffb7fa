"""The template with the real devcontainer CLI: what only the template decides.

The end-to-end job (`devcontainer up` + `isofeat doctor`, both Docker-in-Docker settings) is
tested elsewhere; here:

- the Dev Container Template goes through `devcontainer templates publish` and
  `devcontainer templates apply` with a real OCI registry (Debian's docker-registry on
  loopback);
- a baked project comes up with `devcontainer up`, and the containers have the hardening
  compose.yaml asks for, the read-only mounts really refuse the agent's writes, the Compose
  project name is isofeat init's, and a second `up` reuses the running environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import json5
import jsonschema
import pytest
from cookiecutter.main import cookiecutter

from isofeat.layout import env_id_for, project_name

REPO = Path(__file__).resolve().parents[2]
# Where scripts/build-devcontainer-template writes the Dev Container Template.
DEVCONTAINER_TEMPLATE_DIR = "templates/devcontainer-template"
SCHEMA = REPO / "tests" / "schemas" / "devContainer.base.schema.json"


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed; scripts/bootstrap installs it")
    return found


def test_devcontainer_template_publishes_and_applies_with_the_real_cli(
    registry: str, tmp_path: Path
) -> None:
    devcontainer = _need("devcontainer")
    src = REPO / DEVCONTAINER_TEMPLATE_DIR / "src"
    published = subprocess.run(
        [devcontainer, "templates", "publish", "-r", registry, "-n", "isofeat-test/templates",
         str(src)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    tags = json.loads(published.stdout.strip().splitlines()[-1])["isofeat"]["publishedTags"]
    assert "1" in tags

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    args = {
        "baseImage": "debian:bookworm-slim",
        "codex": "false",
        "featuresNamespace": "registry.example/f",
    }
    applied = subprocess.run(
        [devcontainer, "templates", "apply", "-w", str(workspace),
         "-t", f"{registry}/isofeat-test/templates/isofeat:1", "-a", json.dumps(args)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    files = sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_file())
    assert ".devcontainer/devcontainer.json" in files
    assert ".devcontainer/compose.yaml" in files
    assert not any(f.endswith("devcontainer-template.json") or f == "NOTES.md" for f in files)
    for path in workspace.rglob("*"):
        if path.is_file():
            assert "${templateOption:" not in path.read_text(), path
    config = json5.loads((workspace / ".devcontainer" / "devcontainer.json").read_text())
    schema = json.loads(SCHEMA.read_text())
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(config)) == []
    agents = config["features"]["registry.example/f/ai-agents:1"]
    assert agents == {"claude": "true", "codex": "false", "gemini": "true"}
    assert (
        'image: "debian:bookworm-slim"'
        in (workspace / ".devcontainer" / "compose.yaml").read_text()
    )


# --------------------------------------------------------------------------- devcontainer up


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def _container(project: str, service: str) -> dict[str, Any]:
    ids = _docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).split()  # fmt: skip
    assert len(ids) == 1, f"{service}: {ids}"
    data: dict[str, Any] = json.loads(_docker("inspect", ids[0]))[0]
    return data


@pytest.fixture
def up_env(
    isolated_home: Path, tmp_path: Path, base_image: str, proxy_image: str
) -> dict[str, str]:
    """The host environment of `devcontainer up`: isofeat on PATH, HOME in tmp_path."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def baked(
    tmp_path: Path, up_env: dict[str, str], isofeat_wheel_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, str]]:
    """A git project with the template (local Features, no agents: the fast build)."""
    _need("devcontainer")
    monkeypatch.setenv("ISOFEAT_WHEEL_DIR", str(isofeat_wheel_dir))
    project = tmp_path / "tpl-up"
    project.mkdir()
    (project / "README.md").write_text("demo\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    cookiecutter(
        str(REPO / "templates" / "isofeat"), no_input=True, output_dir=str(project),
        extra_context={"features_source": "local", "agents": "none"},
    )  # fmt: skip
    # The sandbox user (uid 1001, group dev 2000) writes the worktree through the shared group.
    subprocess.run(["chgrp", "-R", "2000", str(project)], check=True)
    subprocess.run(["chmod", "-R", "g+rwX", str(project)], check=True)
    name = project_name(env_id_for(project))
    try:
        yield project, name
    finally:
        subprocess.run(
            ["docker", "compose", "-p", name, "-f", str(project / ".devcontainer" / "compose.yaml"),
             "down", "-v", "-t", "1"],
            capture_output=True, env=up_env, check=False,
        )  # fmt: skip
        images = _docker("images", "-q", "--filter", f"reference=vsc-{project.name}-*").split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *images], capture_output=True, check=False)


def _up(project: Path, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = subprocess.run(
        ["devcontainer", "up", "--workspace-folder", str(project)],
        capture_output=True, text=True, env=env, check=False, timeout=900,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome.get("outcome") == "success", result.stderr[-4000:]
    return outcome, elapsed


def _exec(project: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["devcontainer", "exec", "--workspace-folder", str(project), "bash", "-c", script],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def test_a_baked_project_comes_up_hardened_and_reopens_warm(
    baked: tuple[Path, str], up_env: dict[str, str]
) -> None:
    project, name = baked
    outcome, cold = _up(project, up_env)
    assert outcome["composeProjectName"] == name
    assert outcome["remoteUser"] == "claude"

    dev = _container(name, "dev")
    proxy = _container(name, "proxy")
    assert dev["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in dev["HostConfig"]["SecurityOpt"]
    assert dev["Config"]["User"] == "1001:2000"
    assert not dev["HostConfig"]["PortBindings"] and not proxy["HostConfig"]["PortBindings"]
    assert list(dev["NetworkSettings"]["Networks"]) == [f"{name}_sandbox"]
    assert sorted(proxy["NetworkSettings"]["Networks"]) == [f"{name}_egress", f"{name}_sandbox"]
    assert proxy["HostConfig"]["ReadonlyRootfs"] is True
    sandbox = json.loads(_docker("network", "inspect", f"{name}_sandbox"))[0]
    assert sandbox["Internal"] is True
    mounts = {m["Destination"]: m for m in dev["Mounts"]}
    for target in ("/workspace/.devcontainer", "/run/isofeat/git-objects"):
        assert mounts[target]["RW"] is False, target
    assert mounts["/workspace"]["RW"] is True
    # /workspace/.git is the environment's own git, not the project's (docs/git.md).
    assert mounts["/workspace/.git"]["RW"] is True
    assert mounts["/workspace/.git"]["Source"] != str(project / ".git")
    assert mounts["/run/isofeat/git-objects"]["Source"] == str(project / ".git" / "objects")

    config_before = (project / ".git" / "config").read_bytes()
    probe = _exec(
        project,
        up_env,
        "id -u; grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/1/status;"
        " touch /workspace/.devcontainer/planted 2>/dev/null && echo WROTE-DEVCONTAINER;"
        " printf '#!/bin/sh\\nid\\n' > /workspace/.git/hooks/pre-commit 2>/dev/null"
        " && echo WROTE-HOOK;"
        " printf '[core]\\n\\thooksPath = /tmp\\n' >> /workspace/.git/config 2>/dev/null"
        " && echo WROTE-GITCONFIG;"
        " mv /workspace/.git /workspace/.git-moved 2>/dev/null && echo MOVED-DOT-GIT;"
        " touch /run/isofeat/git-objects/x 2>/dev/null && echo WROTE-OBJECTS;"
        " touch /workspace/agent-was-here && echo WROTE-WORKSPACE",
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert lines[0] == "1001"
    status = probe.stdout
    assert "Uid:\t1001" in status and "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    assert (
        "WROTE-DEVCONTAINER" not in status and not (project / ".devcontainer" / "planted").exists()
    )
    # The agent may write its own git's hooks and config; the project's never change.
    assert not (project / ".git" / "hooks" / "pre-commit").exists()
    assert "MOVED-DOT-GIT" not in status and "WROTE-OBJECTS" not in status
    assert (project / ".git" / "config").read_bytes() == config_before
    assert "WROTE-WORKSPACE" in status and (project / "agent-was-here").exists()

    again, warm = _up(project, up_env)
    assert again["containerId"] == outcome["containerId"]
    print(f"devcontainer up: cold {cold:.1f} s, warm {warm:.1f} s")
    assert warm < 15, f"a warm reopen took {warm:.1f} s"


def test_scaffold_checks_the_oci_features_against_a_real_registry(
    registry: str, tmp_path: Path, isolated_home: Path
) -> None:
    """features_source=oci against Debian's docker-registry: refused while nothing is
    published there, accepted once scripts/publish-features has pushed the Features."""
    project = tmp_path / "oci-project"
    project.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    namespace = "isofeat-test/features"
    scaffold = [sys.executable, "-m", "isofeat", "scaffold", str(project), "--no-input",
                f"features_oci_namespace={registry}/{namespace}"]
    refused = subprocess.run(scaffold, capture_output=True, text=True, env=env, check=False,
                             timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert f"{registry} has no {registry}/{namespace}/" in refused.stderr
    assert "fix: isofeat scaffold features_source=local" in refused.stderr
    assert not (project / ".devcontainer").exists()

    subprocess.run([str(REPO / "scripts" / "publish-features"), "-r", registry, "-n", namespace],
                   capture_output=True, text=True, env=env, check=True, timeout=300)
    accepted = subprocess.run(scaffold, capture_output=True, text=True, env=env, check=False,
                              timeout=120)
    assert accepted.returncode == 0, accepted.stderr
    assert "warning" not in accepted.stderr and "ERROR" not in accepted.stderr
    config = json5.loads((project / ".devcontainer" / "devcontainer.json").read_text())
    assert f"{registry}/{namespace}/isofeat:1" in config["features"]

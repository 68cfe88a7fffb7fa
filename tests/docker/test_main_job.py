"""The main job, end to end: template -> `devcontainer up` -> `isofeat doctor` -> attacks.

This is what the README's first command does on the demo project, with the real
devcontainer CLI, Compose, the real images and the Features from this repository. Every
attack runs inside the sandbox as the agent and asserts an application-level result.
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

import pytest

from isofeat.layout import env_id_for, project_name
from isofeat.tasks import remove_environment
from tests.docker.reopen import devcontainer_up

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed; scripts/bootstrap installs it")
    return found


def host_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_STATE_HOME"] = str(home / "state")
    env["XDG_CONFIG_HOME"] = str(home / "config")
    return env


def bake(root: Path, env: dict[str, str], **answers: str) -> Path:
    """The demo project as a git repository with the template applied (like scripts/demo)."""
    shutil.copytree(REPO / "examples" / "demo-project", root)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    pairs = [f"{k}={v}" for k, v in {"features_source": "local", **answers}.items()]
    subprocess.run([sys.executable, "-m", "isofeat", "scaffold", "--no-input", *pairs],
                   cwd=root, env=env, check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "demo"], cwd=root, check=True)
    return root


def up(ws: Path, env: dict[str, str]) -> dict[str, Any]:
    result = devcontainer_up(need("devcontainer"), ws, env,
                             project=project_name(env_id_for(ws)))
    lines = result.stdout.strip().splitlines()
    outcome: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if outcome.get("outcome") != "success" and "postStartCommand" in result.stdout:
        # The self-test failed at start: say which check, not only that the CLI gave up.
        again = run_in(ws, env, "isofeat doctor --json")
        pytest.fail(f"the self-test failed at start; now: {again.stdout[-3000:]}"
                    f"\n{result.stderr[-3000:]}")
    assert outcome.get("outcome") == "success", (result.stdout[-3000:], result.stderr[-6000:])
    return outcome


def run_in(ws: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in the sandbox as the agent (remoteUser), through the devcontainer CLI."""
    return subprocess.run(
        ["devcontainer", "exec", "--workspace-folder", str(ws), "bash", "-c", script],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )


@pytest.fixture
def environment(
    request: pytest.FixtureRequest, tmp_path: Path, base_image: str, proxy_image: str,
    dind_image: str, isofeat_wheel_dir: Path,
) -> Iterator[tuple[Path, dict[str, str]]]:
    dind = request.param
    env = host_env(tmp_path)
    env["ISOFEAT_WHEEL_DIR"] = str(isofeat_wheel_dir)
    ws = bake(tmp_path / "demo", env, docker_in_docker=dind, project_name="e2e demo")
    try:
        yield ws, env
    finally:
        remove_environment(project_name(env_id_for(ws)), lambda _m: None)


@pytest.mark.parametrize("environment", ["no", "yes"], indirect=True, ids=["plain", "dind"])
def test_main_job_up_doctor_attacks_and_warm_reopen(
    environment: tuple[Path, dict[str, str]],
) -> None:
    ws, env = environment
    started = time.monotonic()
    first = up(ws, env)
    cold = time.monotonic() - started

    # The self-test, as the agent, with every check in its JSON.
    doctor = run_in(ws, env, "isofeat doctor --json")
    report = json.loads(doctor.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert doctor.returncode == 0 and report["ok"], json.dumps(report, indent=2)
    for needed in ("user", "capabilities", "no-sudo", "no-docker-socket", "writes", "proxy-env",
                   "direct-egress", "dns", "ipv6", "proxy-denies", "proxy-allows", "git"):
        assert names[needed]["ok"], names[needed]

    # Acceptance: the agent's view of its box.
    checks = run_in(ws, env, r"""
        set -u
        echo "uid=$(id -u) gid=$(id -g)"
        command -v sudo >/dev/null && echo "sudo=present" || echo "sudo=absent"
        for tool in curl git; do command -v "$tool" >/dev/null && echo "have-$tool"; done
        # Open for append with the shell itself: no tool that could be missing decides this.
        w() { ( : >> "$1" ) 2>/dev/null && echo "$2=writable" || echo "$2=read-only"; }
        w /workspace/.devcontainer/x devcontainer
        # The agent's git is its own: its hooks are its own business, never the host's.
        w /workspace/.git/hooks/post-checkout hooks
        w /run/isofeat/git-objects/x objects
        mv /workspace/.git /workspace/.git-moved 2>/dev/null && echo "dot-git=moved" \
            || echo "dot-git=pinned"
        cd /workspace && git status --porcelain >/dev/null && echo "git=works"
        w /usr/x usr
        w /workspace/agent-was-here workspace
        # Direct egress, even to an allowed host, with the proxy variables ignored:
        # curl must fail to resolve (6), to connect (7) or time out (28).
        curl -sS --noproxy '*' --max-time 5 -o /dev/null https://github.com 2>/dev/null
        echo "direct=$?"
        env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy \
            curl -sS --max-time 5 -o /dev/null http://1.1.1.1/ 2>/dev/null
        echo "raw-ip=$?"
        # A lookalike of an allowed host, through the proxy: the proxy's 403.
        echo "lookalike=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
            http://github.com.attacker.test/)"
        echo "lookalike-connect=$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 \
            https://github.com.attacker.test/)"
        getent hosts example.com >/dev/null && echo "dns=resolves" || echo "dns=none"
        """)
    out = checks.stdout
    for expected in ("uid=1001 gid=2000", "sudo=absent", "have-curl", "have-git",
                     "devcontainer=read-only", "objects=read-only", "dot-git=pinned", "git=works",
                     "usr=read-only", "workspace=writable", "lookalike=403",
                     "lookalike-connect=403", "dns=none"):
        assert expected in out, (expected, out, checks.stderr[-2000:])
    direct = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert direct["direct"] in {"6", "7", "28"}, out
    assert direct["raw-ip"] in {"7", "28"}, out
    assert not (ws / ".git" / "hooks" / "post-checkout").exists()

    # run-claude: the self-test passes here, so Claude Code starts (with its no-prompt flag).
    launched = run_in(ws, env, "run-claude --version")
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "Claude Code" in launched.stdout, launched.stdout
    # With the proxy variables gone the self-test fails, and the agent does not start.
    refused = run_in(ws, env, "env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy "
                              "isofeat run gemini --version")
    assert refused.returncode == 1, refused.stdout
    assert "sandbox self-test failed" in refused.stderr and "proxy-env" in refused.stderr

    # A warm reopen reuses the running environment.
    started = time.monotonic()
    second = up(ws, env)
    warm = time.monotonic() - started
    assert second["containerId"] == first["containerId"]
    print(f"\nmain job: cold up {cold:.1f}s, warm up {warm:.1f}s", file=sys.stderr)

    if (ws / ".devcontainer" / "compose.dind.yaml").exists():
        dind = run_in(ws, env, r"""
            set -u
            for i in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
            docker info --format 'engine={{.ServerVersion}}'
            # Nothing can be pulled: import a tiny image made of /usr/bin/true and its libraries.
            tar -chf /tmp/mini.tar $(ldd /usr/bin/true | grep -o '/[^ ]*') /usr/bin/true \
                2>/dev/null
            docker import /tmp/mini.tar isofeat-mini:1 >/dev/null
            docker run --rm isofeat-mini:1 /usr/bin/true && echo "nested-run=ok" \
                || echo "nested-run=failed"
            # The Docker-in-Docker proxy is not for the sandbox (case 10).
            curl -s -o /dev/null -w 'dind-proxy=%{http_code}\n' --max-time 5 \
                -x http://docker-proxy:8888 https://registry-1.docker.io/ \
                || echo "dind-proxy=unreachable"
            """)
        assert "engine=" in dind.stdout, (dind.stdout, dind.stderr[-3000:])
        assert "nested-run=ok" in dind.stdout, (dind.stdout, dind.stderr[-3000:])
        assert ("dind-proxy=unreachable" in dind.stdout
                or "dind-proxy=403" in dind.stdout), dind.stdout

    # A self-test that really fails at start stops the sandbox: the proxy is gone (so the
    # egress checks fail), the agent's container is restarted, and the reopen runs the
    # postStartCommand again. The environment must not stay up for an agent to use.
    project = project_name(env_id_for(ws))
    subprocess.run(["docker", "stop", "-t", "1", container_of(project, "proxy")], check=True,
                   capture_output=True)
    dev = container_of(project, "dev")
    subprocess.run(["docker", "restart", "-t", "1", dev], check=True, capture_output=True)
    broken = subprocess.run(
        [need("devcontainer"), "up", "--workspace-folder", str(ws)],
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    said = broken.stdout + broken.stderr
    assert '"outcome":"success"' not in said.replace(" ", ""), said[-3000:]
    assert "SANDBOX CHECK FAILED" in said and "stopping this container" in said, said[-3000:]
    for _ in range(30):
        if not running(dev):
            break
        time.sleep(1)
    assert not running(dev), "the sandbox kept running after its self-test failed"
    after = run_in(ws, env, "echo still-usable")
    assert after.returncode != 0 and "still-usable" not in after.stdout


def container_of(project: str, service: str) -> str:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
         "--filter", f"label=com.docker.compose.service={service}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert len(ids) == 1, (project, service, ids)
    return ids[0]


def running(container: str) -> bool:
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container],
                           capture_output=True, text=True, check=False).stdout.strip()
    return state == "true"


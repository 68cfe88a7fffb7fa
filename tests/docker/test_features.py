"""The Dev Container Features against the real engine and the real devcontainer CLI.

- the scenario suite (`scripts/test-features`: `devcontainer features test` on bookworm and on
  a base whose uid 1001 / gid 2000 are taken);
- install.sh run twice is harmless; bad platforms and account conflicts fail clearly;
- agent-team merges into settings a user already has;
- the publishing round trip: `scripts/publish-features` to Debian's docker-registry on
  loopback, then `devcontainer up` of a devcontainer.json made of an image and the five
  Features by OCI reference, checked from inside as the sandbox user.

Everything created carries the label ``isofeat.test=<run id>`` or a name starting with
``isofeat-ft-`` and is removed at the end. The base images (isofeat-test/*) are kept: they are
built once by scripts/test-features and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "features" / "src"
WHEELS = SRC / "isofeat" / "wheels"
BOOKWORM = "isofeat-test/bookworm"
BOOKWORM_UID1001 = "isofeat-test/bookworm-uid1001"
RUN_ID = uuid.uuid4().hex[:8]
FEATURE_IDS = ("sandbox-user", "egress-proxy", "ai-agents", "agent-team", "isofeat")
# The recommended install order (docs/features.md); each install.sh also copes with any other.
ORDER = ("sandbox-user", "isofeat", "ai-agents", "agent-team", "egress-proxy")
# Options for the idempotence run: Codex only (the quickest agent), isofeat from the wheels.
OPTION_ENV = {
    "ai-agents": "CLAUDE=false GEMINI=false NODESOURCE=pypi-wheel",
    "isofeat": "SOURCE=wheels SELFTEST=false",
}


def devcontainer_cli() -> str:
    cli = shutil.which("devcontainer") or str(REPO / ".venv" / "bin" / "devcontainer")
    if not Path(cli).exists():
        pytest.fail("the devcontainer CLI is missing: run scripts/bootstrap", pytrace=False)
    return cli


def run(
    argv: Sequence[str], *, timeout: float = 900, check: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result


def in_container(
    image: str, script: str, *, extra: Sequence[str] = (), timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run ``bash -c script`` as root in a throwaway container with features/src at /features."""
    name = f"isofeat-ft-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    return run(
        [
            "docker",
            "run",
            "--rm",
            "--name",
            name,
            "--label",
            f"isofeat.test={RUN_ID}",
            "-v",
            f"{SRC}:/features:ro",
            *extra,
            image,
            "bash",
            "-c",
            script,
        ],
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def prepared() -> None:
    """The test bases and the isofeat wheels (scripts/test-features --prepare)."""
    run([str(REPO / "scripts" / "test-features"), "--prepare"], check=True, timeout=1200)


# --- the scenario suite ----------------------------------------------------------------------


def test_devcontainer_features_test_passes_for_every_scenario(prepared: None) -> None:
    started = time.monotonic()
    result = run([str(REPO / "scripts" / "test-features")], timeout=2400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    trixie = os.environ.get("ISOFEAT_FEATURES_TRIXIE") == "1"
    expected = 0
    for path in (REPO / "features" / "test").glob("*/scenarios.json"):
        scenarios = json.loads(path.read_text())
        expected += sum(1 for s in scenarios.values() if trixie or "trixie" not in s["image"])
    assert output.count("Passed:      '") == expected, output[-5000:]
    assert "Failed:" not in output
    print(f"scripts/test-features took {time.monotonic() - started:.0f} s")


# --- install.sh on its own -------------------------------------------------------------------


def install_all(order: Sequence[str]) -> str:
    return "\n".join(
        f"echo '### {f}'; {OPTION_ENV.get(f, '')} bash /features/{f}/install.sh || exit 1"
        for f in order
    )


def test_installing_twice_is_harmless(prepared: None) -> None:
    script = f"""
        {install_all(ORDER)}
        echo '##### SECOND RUN'
        {install_all(ORDER)}
        echo '##### STATE'
        echo "id=$(id -u claude):$(id -g claude)"
        prefix=/usr/local/share/npm-global/bin
        echo "codex=$(runuser -u claude -- env PATH=$prefix:$PATH codex --version)"
        echo "isofeat=$(isofeat --version)"
        echo "setuid=$(find / -xdev -type f -perm /6000 | wc -l)"
        echo "hooks=$(grep -c 'isofeat notify send' /home/claude/.claude/settings.json)"
        echo "umask_lines=$(grep -c '^umask 002' /etc/bash.bashrc)"
        echo "env_blocks=$(grep -c 'isofeat egress-proxy >>>' /etc/environment)"
        echo "bashrc_blocks=$(grep -c 'isofeat egress-proxy >>>' /etc/bash.bashrc)"
    """
    result = in_container(BOOKWORM, script)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    first, rest = result.stdout.split("##### SECOND RUN")
    second, state = rest.split("##### STATE")
    assert "installing" in first and "created user claude" in first
    # A second run changes nothing: no package, download, account, file or mode change.
    for word in (
        "installing",
        "downloading",
        "npm install",
        "created",
        "renaming",
        "wrote",
        "removed setuid",
        "purging",
        "installed subagent",
        "wired",
    ):
        assert word not in second, f"second run still did '{word}':\n{second}"
    assert "already installed" in second
    values = dict(line.split("=", 1) for line in state.strip().splitlines())
    assert values["id"] == "1001:2000"
    assert values["codex"].startswith("codex-cli ")
    assert values["isofeat"].startswith("isofeat ")
    assert values["setuid"] == "0", "no setuid/setgid file after two runs"
    # Each hook, line and marked block exists once, not once per run.
    assert values["hooks"] == "3"
    assert values["umask_lines"] == values["env_blocks"] == values["bashrc_blocks"] == "1"


def test_account_conflict_fails_clearly_and_changes_nothing(prepared: None) -> None:
    result = in_container(
        BOOKWORM_UID1001,
        "bash /features/sandbox-user/install.sh; echo rc=$?; getent group dev || echo no-dev-group",
    )
    assert "rc=1" in result.stdout
    assert "uid 1001 already belongs to user 'node'" in result.stderr
    assert "onConflict" in result.stderr, "the message says how to fix it"
    assert "no-dev-group" in result.stdout, "nothing was changed before failing"


def test_unsupported_distribution_fails_clearly(prepared: None, tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=alpine\nVERSION_ID=3.20\nPRETTY_NAME="Alpine Linux"\n')
    script = "; ".join(f"bash /features/{f}/install.sh; echo {f}=$?" for f in FEATURE_IDS)
    result = in_container(BOOKWORM, script, extra=["-v", f"{os_release}:/etc/os-release:ro"])
    for feature in FEATURE_IDS:
        assert f"{feature}=1" in result.stdout
        assert f"ERROR ({feature}): unsupported distribution 'alpine'" in result.stderr


def test_unsupported_architecture_fails_clearly(prepared: None) -> None:
    # setarch makes uname -m report i686 (a 32-bit personality), which Node.js wheels,
    # Claude Code and Codex do not support.
    result = in_container(BOOKWORM, "setarch i686 bash /features/ai-agents/install.sh; echo rc=$?")
    assert "rc=1" in result.stdout
    assert "unsupported architecture 'i686'" in result.stderr


def test_agent_team_merges_into_existing_settings(prepared: None, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    user_settings = {
        "model": "opus",
        "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say done"}]}]},
    }
    (seed / "settings.json").write_text(json.dumps(user_settings))
    (seed / "config.toml").write_text('model = "o3"\n\n[tui]\nnotifications = true\n')
    (seed / "qa-engineer.md").write_text("---\nname: qa-engineer\n---\nmy own QA prompt\n")
    seed.chmod(0o755)
    script = """
        bash /features/sandbox-user/install.sh >/dev/null || exit 1
        runuser -u claude -- bash -c 'mkdir -p ~/.claude/agents ~/.codex &&
            cp /seed/settings.json ~/.claude/ && cp /seed/config.toml ~/.codex/ &&
            cp /seed/qa-engineer.md ~/.claude/agents/' || exit 1
        bash /features/agent-team/install.sh || exit 1
        echo '##### SETTINGS'; cat /home/claude/.claude/settings.json
        echo '##### CODEX'; cat /home/claude/.codex/config.toml
        echo '##### QA'; cat /home/claude/.claude/agents/qa-engineer.md
        echo '##### COUNT'; ls /home/claude/.claude/agents/*.md | wc -l
    """
    result = in_container(BOOKWORM, script, extra=["-v", f"{seed}:/seed:ro"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    settings = json.loads(out.split("##### SETTINGS")[1].split("##### CODEX")[0])
    assert settings["model"] == "opus"
    stop = [h["command"] for group in settings["hooks"]["Stop"] for h in group["hooks"]]
    assert "say done" in stop
    assert "isofeat notify send --from-hook claude --urgency complete" in stop
    assert {"Notification", "StopFailure"} <= set(settings["hooks"])
    codex = out.split("##### CODEX")[1].split("##### QA")[0]
    assert 'model = "o3"' in codex and "[tui]" in codex
    assert codex.index("notify = ") < codex.index("[tui]"), "a top-level key before any table"
    assert "my own QA prompt" in out.split("##### QA")[1], "the user's edited agent is kept"
    assert out.split("##### COUNT")[1].split()[0] == "7"
    assert "keeping your edited" in result.stdout


# --- publishing round trip -------------------------------------------------------------------


def registry_tags(registry: str, repository: str) -> set[str]:
    url = f"http://{registry}/v2/{repository}/tags/list"
    with urllib.request.urlopen(url, timeout=10) as response:
        return set(json.load(response)["tags"])


def test_publish_round_trip_and_a_devcontainer_of_image_plus_five_features(
    prepared: None, registry: str, tmp_path: Path
) -> None:
    namespace = f"isofeat-test-{RUN_ID}/features"
    run(
        [
            str(REPO / "scripts" / "publish-features"),
            "-r",
            registry,
            "-n",
            namespace,
            # Offline: isofeat comes from the wheels built from this checkout.
            "--wheels",
            str(WHEELS),
        ],
        check=True,
        timeout=300,
    )
    for feature in FEATURE_IDS:
        tags = registry_tags(registry, f"{namespace}/{feature}")
        assert {"1", "1.0", "1.0.0", "latest"} <= tags, (feature, tags)
    assert "latest" in registry_tags(registry, namespace), "the collection metadata"

    workspace = tmp_path / "ws"
    (workspace / ".devcontainer").mkdir(parents=True)
    # The host side of sharing (isofeat init does this): the workspace belongs to group 2000.
    os.chown(workspace, -1, 2000)
    workspace.chmod(0o2775)
    ref = f"{registry}/{namespace}"
    config = {
        "image": BOOKWORM,
        # The features in the CLI's default order (no overrideFeatureInstallOrder).
        "features": {
            f"{ref}/sandbox-user:1": {},
            f"{ref}/egress-proxy:1": {},
            f"{ref}/ai-agents:1": {},
            f"{ref}/agent-team:1": {},
            # No proxy, internal network or dropped capabilities here: not a full sandbox,
            # so the start-time self-test is off and run by hand below.
            f"{ref}/isofeat:1": {"selfTest": False},
        },
        # Features cannot set the user tools run as (the spec gives them no remoteUser).
        "remoteUser": "claude",
        "updateRemoteUserUID": False,
    }
    (workspace / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config, indent=2))
    cli = devcontainer_cli()
    label = f"isofeat.test={RUN_ID}"
    base = [cli, "--workspace-folder", str(workspace), "--id-label", label]
    try:
        up = run([cli, "up", *base[1:]], timeout=1500)
        assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-5000:]
        assert json.loads(up.stdout.strip().splitlines()[-1])["outcome"] == "success"

        def sh(command: str) -> subprocess.CompletedProcess[str]:
            return run([base[0], "exec", *base[1:], "bash", "-c", command], timeout=300)

        assert sh("id -u").stdout.strip() == "1001"
        assert sh("id -gn").stdout.strip() == "dev"
        assert sh("command -v sudo").returncode == 1, "sudo is absent"
        write_usr = sh("touch /usr/isofeat-probe")
        assert write_usr.returncode != 0 and "Permission denied" in write_usr.stderr
        for agent in ("claude", "codex", "gemini"):
            version = sh(f"{agent} --version")
            assert version.returncode == 0 and version.stdout.strip(), (agent, version.stderr)
        assert sh("isofeat --version").stdout.startswith("isofeat ")
        assert sh("touch ./from-the-sandbox && rm ./from-the-sandbox").returncode == 0
        assert sh("ls ~/.claude/agents/*.md | wc -l").stdout.strip() == "7"
        assert sh("echo $HTTPS_PROXY").stdout.strip() == "http://proxy:8888"
        help_text = sh("isofeat --help").stdout
        if "doctor" not in help_text.split("positional arguments")[-1]:
            pytest.xfail("isofeat doctor does not exist yet (issue 4); everything else passed")
        doctor = sh("isofeat doctor")
        # Outside the template's network the checks may fail (exit 1); they must run, not crash.
        assert doctor.returncode in (0, 1), doctor.stdout + doctor.stderr
    finally:
        ids = run(["docker", "ps", "-aq", "--filter", f"label={label}"]).stdout.split()
        images = {run(["docker", "inspect", "-f", "{{.Image}}", cid]).stdout.strip() for cid in ids}
        if ids:
            run(["docker", "rm", "-f", *ids])
        for image in images - {""}:
            run(["docker", "rmi", "-f", image])


def test_pypi_source_says_plainly_that_isofeat_is_not_on_the_index(
    base_image: str, tmp_path: Path
) -> None:
    # source=pypi, for real: the index this build uses has no isofeat. A folder of its own holds
    # the Feature, so no wheel left in features/src/isofeat/wheels can change the outcome.
    feature = tmp_path / "isofeat"
    shutil.copytree(SRC / "isofeat", feature, ignore=shutil.ignore_patterns("wheels"))
    result = run(["docker", "run", "--rm", "--label", f"isofeat.test={RUN_ID}", "-u", "0",
                  "-e", "SOURCE=pypi", "-v", f"{feature}:/f:ro", base_image,
                  "bash", "-c", "bash /f/install.sh; echo rc=$?"], timeout=600)
    assert "rc=1" in result.stdout, (result.stdout[-2000:], result.stderr[-2000:])
    assert "not on the package index this build uses" in result.stderr, result.stderr[-2000:]
    assert "features_source=local" in result.stderr

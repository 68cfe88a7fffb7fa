"""The sandbox account has one home: the defaults of the sandbox-user Feature
(features/src/sandbox-user/devcontainer-feature.json). Every other place that must repeat the
user, uid, group or gid is compared with it here, so a change in one place cannot leave the
others behind:

- the self-test (isofeat doctor) and the host side (isofeat init's shared group);
- the template: the dev service's ``user:``, ``remoteUser`` and the agents' home volumes, in the
  cookiecutter template and in the generated Dev Container Template;
- the Docker-in-Docker image, whose socket belongs to the sandbox group;
- the Feature's own description and the scenario checks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from isofeat import doctor, layout

REPO = Path(__file__).resolve().parents[2]
FEATURE = REPO / "features" / "src" / "sandbox-user"
COMPOSE = (
    REPO / "templates" / "isofeat" / "{{cookiecutter.__devcontainer_dir}}" / "compose.yaml",
    REPO / "templates" / "devcontainer-template" / "src" / "isofeat" / ".devcontainer"
    / "compose.yaml",
)
DEVCONTAINER = (
    REPO / "templates" / "isofeat" / "{{cookiecutter.__devcontainer_dir}}" / "devcontainer.json",
    REPO / "templates" / "devcontainer-template" / "src" / "isofeat" / ".devcontainer"
    / "devcontainer.json",
)
DIND = REPO / "src" / "isofeat" / "images" / "dind"


def default(option: str) -> str:
    data = json.loads((FEATURE / "devcontainer-feature.json").read_text())
    return str(data["options"][option]["default"])


USER, UID, GROUP, GID = (default(o) for o in ("username", "userUid", "groupName", "userGid"))


def test_the_defaults_are_what_the_docs_promise() -> None:
    # The values themselves: changing them is a breaking change for every existing sandbox.
    assert (USER, UID, GROUP, GID) == ("claude", "1001", "dev", "2000")


def test_the_feature_description_names_its_defaults() -> None:
    description = json.loads((FEATURE / "devcontainer-feature.json").read_text())["description"]
    for value in (f"default {USER}", f"uid {UID}", f"group {GROUP}", f"gid {GID}"):
        assert value in description


def test_the_self_test_and_the_host_side_expect_the_same_account() -> None:
    assert str(layout.SANDBOX_UID) == UID  # the one home in Python (test_layout.py ties it on)
    assert str(layout.SANDBOX_GID) == GID
    assert (doctor.EXPECTED_UID, doctor.EXPECTED_GID) == (layout.SANDBOX_UID, layout.SANDBOX_GID)


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.parts[-4])
def test_the_template_runs_the_dev_service_as_the_sandbox_user(path: Path) -> None:
    text = path.read_text()
    assert f'user: "{UID}:{GID}"' in text
    homes = set(re.findall(r":/home/([a-z_][a-z0-9_-]*)/\.", text))
    assert homes == {USER}, "the agents' state volumes are mounted in the sandbox user's home"


@pytest.mark.parametrize("path", DEVCONTAINER, ids=lambda p: p.parts[-4])
def test_the_template_attaches_as_the_sandbox_user(path: Path) -> None:
    assert f'"remoteUser": "{USER}"' in path.read_text()


def test_the_dind_socket_belongs_to_the_sandbox_group() -> None:
    dockerfile = (DIND / "Dockerfile").read_text()
    assert f"groupadd --gid {GID} {GROUP};" in dockerfile
    entrypoint = (DIND / "entrypoint.sh").read_text()
    assert f'SOCKET_GID="${{ISOFEAT_DIND_SOCKET_GID:-{GID}}}"' in entrypoint


def test_the_scenario_checks_expect_the_defaults() -> None:
    checks = (REPO / "features" / "test" / "_global" / "checks.sh").read_text()
    assert f'test "$(id -u)" = {UID}' in checks
    assert f'test "$(id -gn):$(id -g)" = {GROUP}:{GID}' in checks
    defaults = (REPO / "features" / "test" / "sandbox-user" / "defaults.sh").read_text()
    assert f'test "$(id -u)" = {UID}' in defaults
    assert f'test "$(id -g):$(id -gn)" = "{GID}:{GROUP}"' in defaults


def test_the_dind_runtime_tmpfs_belongs_to_the_engine_user() -> None:
    # compose.dind.yaml mounts the engine's XDG_RUNTIME_DIR as a tmpfs (a SIGKILLed engine
    # must start clean); its owner must be the image's `rootless` user, group dev.
    dockerfile = (DIND / "Dockerfile").read_text()
    user = re.search(r"useradd --uid (\d+) --gid (\d+) [^\n]* rootless;", dockerfile)
    runtime = re.search(r"ENV XDG_RUNTIME_DIR=(\S+)", dockerfile)
    assert user is not None and runtime is not None
    uid, gid = user.groups()
    fragment = (REPO / "templates" / "compose-fragments" / "compose.dind.yaml").read_text()
    assert f"- {runtime.group(1)}:uid={uid},gid={gid},mode=0700\n" in fragment
    assert gid == GID == str(layout.SANDBOX_GID)

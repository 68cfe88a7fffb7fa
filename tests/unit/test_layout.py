"""Each fact of :mod:`isofeat.layout` has one home; every copy another format must keep is
compared with it here (uid and gid, image names, paths)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import yaml

from isofeat import doctor, image_build, layout, notify
from isofeat.cli import main

REPO = Path(__file__).resolve().parents[2]
COOKIECUTTER = REPO / "templates" / "isofeat"
COMPOSE_FILES = (
    COOKIECUTTER / "{{cookiecutter.__devcontainer_dir}}" / "compose.yaml",
    REPO / "templates" / "devcontainer-template" / "src" / "isofeat" / ".devcontainer"
    / "compose.yaml",
)
USER = f"{layout.SANDBOX_UID}:{layout.SANDBOX_GID}"


def test_uid_and_gid_are_the_sandbox_user_features_defaults() -> None:
    meta = json.loads((REPO / "features/src/sandbox-user/devcontainer-feature.json").read_text())
    assert meta["options"]["userUid"]["default"] == str(layout.SANDBOX_UID)
    assert meta["options"]["userGid"]["default"] == str(layout.SANDBOX_GID)


def test_compose_runs_dev_as_the_sandbox_user() -> None:
    for path in COMPOSE_FILES:
        # Both files hold Jinja or ${templateOption:...}; the user: line is plain YAML.
        line = next(x for x in path.read_text().splitlines() if x.strip().startswith("user:"))
        assert yaml.safe_load(line.strip())["user"] == USER, path


def test_the_dind_engine_socket_belongs_to_the_sandbox_group() -> None:
    images = REPO / "src" / "isofeat" / "images" / "dind"
    dockerfile = (images / "Dockerfile").read_text()
    assert re.search(rf"groupadd --gid {layout.SANDBOX_GID} dev;", dockerfile)
    assert re.search(rf"useradd --uid 1000 --gid {layout.SANDBOX_GID} ", dockerfile)
    entry = (images / "entrypoint.sh").read_text()
    assert f'SOCKET_GID="${{ISOFEAT_DIND_SOCKET_GID:-{layout.SANDBOX_GID}}}"' in entry


def test_the_doctor_expects_the_sandbox_user() -> None:
    assert (doctor.EXPECTED_UID, doctor.EXPECTED_GID) == (layout.SANDBOX_UID, layout.SANDBOX_GID)
    assert str(doctor.GIT_OBJECTS) == layout.GIT_OBJECTS_TARGET


def test_base_image_is_the_templates_and_dockerfiles_default() -> None:
    assert image_build.BASE_IMAGE == layout.BASE_IMAGE
    cookie = json.loads((COOKIECUTTER / "cookiecutter.json").read_text())
    assert cookie["base_image"] == layout.BASE_IMAGE
    for name in ("proxy", "dind", "broker"):
        dockerfile = (REPO / "src" / "isofeat" / "images" / name / "Dockerfile").read_text()
        assert f"ARG BASE_IMAGE={layout.BASE_IMAGE}\n" in dockerfile, name


def test_the_broker_facts_agree_with_its_image_and_the_template() -> None:
    """tinyproxy's `Upstream http broker:8080` (layout) must reach what the image listens on,
    under the service name compose.yaml gives it, with its render where the image reads it."""
    from isofeat import broker

    folder = REPO / "src" / "isofeat" / "images" / "broker"
    entrypoint = (folder / "entrypoint.sh").read_text()
    assert f"--mode regular@{layout.BROKER_PORT} " in entrypoint
    assert f"readonly CONF_DIR={layout.BROKER_CONF_TARGET}\n" in entrypoint
    assert f"/dev/tcp/127.0.0.1/{layout.BROKER_PORT}\n" in (folder / "healthcheck.sh").read_text()
    assert f"EXPOSE {layout.BROKER_PORT}\n" in (folder / "Dockerfile").read_text()
    compose = (COOKIECUTTER / "{{cookiecutter.__devcontainer_dir}}" / "compose.yaml").read_text()
    assert f"\n  {layout.BROKER_SERVICE}:\n" in compose
    assert f"target: {layout.BROKER_CONF_TARGET}\n" in compose
    assert f"target: {layout.TRUST_TARGET}\n" in compose
    assert broker.upstream_lines(["api.example.com"]) == [
        f'Upstream http {layout.BROKER_SERVICE}:{layout.BROKER_PORT} "api.example.com"']


def test_environment_folders(tmp_path: Path) -> None:
    ws = tmp_path / "My Project"
    ws.mkdir()
    environ = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    env = layout.Environment(ws, environ)
    assert re.fullmatch(r"my-project-[0-9a-f]{10}", env.env_id)
    assert env.project == f"isofeat-{env.env_id}"
    assert env.state_dir == tmp_path / "state" / "isofeat" / "envs" / env.env_id
    assert env.notify_dir == notify.env_notify_dir(env.env_id, environ)
    # Without XDG_STATE_HOME: under HOME, like notifications.
    home = layout.Environment(ws, {"HOME": str(tmp_path)})
    assert home.state_dir == tmp_path / ".local" / "state" / "isofeat" / "envs" / env.env_id


def test_init_writes_what_layout_says(tmp_path: Path, isolated_home: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".devcontainer").mkdir(parents=True)
    assert main(["init", "-q", "--no-share", str(ws)]) == 0
    env = layout.Environment(ws.resolve())
    values = dict(
        line.split("=", 1) for line in (ws / ".devcontainer" / layout.ENV_FILE).read_text()
        .splitlines() if "=" in line and not line.startswith("#")
    )
    assert values["COMPOSE_PROJECT_NAME"] == env.project
    assert values["ISOFEAT_STATE_DIR"].strip("'") == str(env.state_dir)
    assert values["ISOFEAT_PROXY_CONF"].strip("'") == str(env.proxy_dir)
    assert values["ISOFEAT_DIND_PROXY_CONF"].strip("'") == str(env.dind_proxy_dir)
    assert values["ISOFEAT_NOTIFY_HOST_DIR"].strip("'") == str(env.notify_dir)
    assert values["ISOFEAT_PROXY_IMAGE"] == layout.PROXY_IMAGE
    assert values["ISOFEAT_DIND_IMAGE"] == layout.DIND_IMAGE


def test_scaffold_knows_exactly_the_templates_variables() -> None:
    from isofeat import scaffold

    cookie = json.loads((COOKIECUTTER / "cookiecutter.json").read_text())
    assert tuple(k for k in cookie if not k.startswith("_")) == scaffold.VARIABLES


# --- the agents: isofeat.agents.AGENTS is the table ---


def _hook_constant(name: str) -> Any:
    tree = ast.parse((COOKIECUTTER / "hooks" / "pre_gen_project.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"pre_gen_project.py has no {name}")


def test_every_copy_of_the_agent_names_is_the_table() -> None:
    from isofeat.agents import AGENTS

    names = list(AGENTS)
    assert list(_hook_constant("AGENTS")) == names
    cookie = json.loads((COOKIECUTTER / "cookiecutter.json").read_text())
    assert cookie["agents"].split(",") == names
    feature = json.loads((REPO / "features/src/ai-agents/devcontainer-feature.json").read_text())
    assert [k for k, v in feature["options"].items() if v["type"] == "boolean"] == names
    template = REPO / "templates" / "devcontainer-template" / "src" / "isofeat"
    meta = json.loads((template / "devcontainer-template.json").read_text())
    assert [k for k, v in meta["options"].items() if v["type"] == "boolean"] == names
    compose = (COOKIECUTTER / "{{cookiecutter.__devcontainer_dir}}" / "compose.yaml").read_text()
    assert f'agents | select("in", {json.dumps(names)})' in compose
    devcontainer = (COOKIECUTTER / "{{cookiecutter.__devcontainer_dir}}" / "devcontainer.json")
    assert re.findall(r'"(\w+)": \{\{ agent\(', devcontainer.read_text()) == names

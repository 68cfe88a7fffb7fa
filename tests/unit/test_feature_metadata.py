"""Static checks of the Dev Container Features in features/, without Docker.

- every devcontainer-feature.json validates against the Feature schema (the vendored copy in
  tests/schemas/, MIT, from devcontainers/spec) and follows STYLE.md (key order, camelCase
  options, proposals and enums, install.sh defaults equal to the JSON defaults);
- the scenario tests are complete (every scenario names its image and has its script);
- the agent team's subagent files are valid Claude Code subagents;
- agent-team's merge (apply.py) keeps whatever the user already has;
- devcontainer-collection.json equals what `devcontainer features package` generates.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "features" / "src"
TESTS = REPO / "features" / "test"
SCHEMAS = REPO / "tests" / "schemas"
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"


def _hook_features() -> tuple[str, ...]:
    """The template's pre_gen hook lists the Feature ids (it needs them without isofeat)."""
    hook = REPO / "templates" / "isofeat" / "hooks" / "pre_gen_project.py"
    for node in ast.parse(hook.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "FEATURES"
        ]:
            return tuple(sorted(ast.literal_eval(node.value)))
    raise AssertionError("pre_gen_project.py has no FEATURES")


# test_the_five_features_and_nothing_else compares them with the folders in features/src.
FEATURE_IDS = _hook_features()
# STYLE.md: the keys we use, in this order; anything else (lifecycle hooks) comes after.
KEY_ORDER = (
    "id",
    "version",
    "name",
    "documentationURL",
    "description",
    "options",
    "containerEnv",
    "installsAfter",
)
TEST_BASES = {"isofeat-test/bookworm", "isofeat-test/bookworm-uid1001", "isofeat-test/trixie"}
SUBAGENTS = (
    "technical-lead",
    "analytics-engineer",
    "software-engineer",
    "qa-engineer",
    "code-reviewer",
    "technical-writer",
    "senior-devops",
)
# Claude Code's built-in tools (https://code.claude.com/docs/en/settings#tools-available-to-claude).
CLAUDE_TOOLS = {
    "Bash",
    "Edit",
    "Glob",
    "Grep",
    "MultiEdit",
    "NotebookEdit",
    "Read",
    "Task",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Write",
}
CLAUDE_MODELS = {"sonnet", "opus", "haiku", "inherit"}


def feature_json(feature: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SRC / feature / "devcontainer-feature.json").read_text())
    return data


def install_defaults(feature: str) -> dict[str, str]:
    """``OPTION -> default`` from install.sh lines like ``X="${OPTION:-"default"}"``."""
    text = (SRC / feature / "install.sh").read_text()
    pattern = re.compile(r'^[A-Z0-9_]+="\$\{([A-Z0-9]+):-"([^"]*)"\}"$', re.MULTILINE)
    return dict(pattern.findall(text))


def as_env_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- the set of features ---------------------------------------------------------------------


def test_the_five_features_and_nothing_else() -> None:
    assert len(FEATURE_IDS) == 5
    assert sorted(p.name for p in SRC.iterdir() if p.is_dir()) == list(FEATURE_IDS)
    assert sorted(p.name for p in TESTS.iterdir() if p.is_dir()) == sorted(
        [*FEATURE_IDS, "_global"]
    )


def test_vendored_schemas_match_the_shared_copy() -> None:
    assert (SCHEMAS / "LICENSE-devcontainers-spec").is_file()
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip(f"{SHARED_SCHEMAS} is absent; the vendored copy is what the tests use")
    for name in ("devContainerFeature.schema.json", "devContainer.base.schema.json"):
        assert (SCHEMAS / name).read_bytes() == (SHARED_SCHEMAS / name).read_bytes(), name


# --- devcontainer-feature.json ---------------------------------------------------------------


@pytest.mark.parametrize("feature", FEATURE_IDS)
def test_metadata_validates_against_the_schema(feature: str) -> None:
    from jsonschema.validators import validator_for

    schema = json.loads((SCHEMAS / "devContainerFeature.schema.json").read_text())
    validator_cls = validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(
        validator_cls(schema).iter_errors(feature_json(feature)), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("feature", FEATURE_IDS)
def test_metadata_follows_the_style(feature: str) -> None:
    data = feature_json(feature)
    assert data["id"] == feature
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", data["version"])
    assert data["documentationURL"].endswith(f"/features/src/{feature}")
    keys = list(data)
    ours = [k for k in keys if k in KEY_ORDER]
    assert ours == [k for k in KEY_ORDER if k in data], f"key order: {keys}"
    assert keys[: len(ours)] == ours, f"other keys must come after {KEY_ORDER}: {keys}"
    for option_id, option in data.get("options", {}).items():
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", option_id), f"{option_id} is not camelCase"
        assert option["description"].strip()
        assert "default" in option
        if option["type"] == "boolean":
            assert isinstance(option["default"], bool)
        if "enum" in option:
            assert option["default"] in option["enum"]
        if option_id == "version" or option_id.endswith("Version"):
            assert option.get("proposals") and option["default"], option_id


@pytest.mark.parametrize("feature", FEATURE_IDS)
def test_install_sh_defaults_equal_the_json_defaults(feature: str) -> None:
    options = feature_json(feature).get("options", {})
    mapped = install_defaults(feature)
    expected = {option_id.upper(): as_env_value(o["default"]) for option_id, o in options.items()}
    assert mapped == expected


@pytest.mark.parametrize("feature", FEATURE_IDS)
def test_install_sh_has_the_standard_shape(feature: str) -> None:
    path = SRC / feature / "install.sh"
    assert os.access(path, os.X_OK), f"{path} is not executable"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert lines[1].startswith(f"# {feature}:"), "a header comment says what the script does"
    strict = lines.index("set -euo pipefail")
    last_option = max(i for i, line in enumerate(lines) if re.match(r'^[A-Z0-9_]+="\$\{', line))
    assert last_option < strict, "options are mapped before set -euo pipefail"
    # The shared helpers (features/lib/common.sh, copied into vendor/) define die and the root
    # check; sourcing them only defines, so the root check is the first thing the script does.
    feature_line = lines.index(f'FEATURE="{feature}"')
    source = lines.index('. "$FEATURE_DIR/vendor/common.sh"')
    root_check = lines.index("require_root")
    first_function = next(i for i, line in enumerate(lines) if re.match(r"^[a-z_]+\(\) \{", line))
    assert strict < feature_line < source < root_check < first_function
    assert "check_distribution " in path.read_text(), "check_platform names what it needs"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_uid_is_not_an_option_name() -> None:
    # Options reach install.sh as upper-cased variables, and UID is read-only in bash.
    for feature in FEATURE_IDS:
        for option_id in feature_json(feature).get("options", {}):
            assert option_id.upper() not in {"UID", "EUID", "PPID", "GROUPS", "HOSTNAME", "PATH"}


# --- scenario tests --------------------------------------------------------------------------


def scenario_files() -> list[Path]:
    return sorted(TESTS.glob("*/scenarios.json"))


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.parent.name)
def test_scenarios_are_complete(path: Path) -> None:
    scenarios = json.loads(path.read_text())
    assert scenarios, f"{path} has no scenarios"
    for name, scenario in scenarios.items():
        assert scenario.get("image") in TEST_BASES, f"{name}: every scenario names a test base"
        for feature, values in scenario["features"].items():
            assert feature in FEATURE_IDS, f"{name}: unknown feature {feature}"
            options = feature_json(feature).get("options", {})
            for option_id, value in values.items():
                assert option_id in options, f"{name}: {feature} has no option {option_id}"
                spec = options[option_id]
                assert isinstance(value, bool) == (spec["type"] == "boolean"), option_id
                if "enum" in spec:
                    assert value in spec["enum"], f"{name}: {option_id}={value}"
        for entry in scenario.get("overrideFeatureInstallOrder", []):
            assert entry.removeprefix("./") in scenario["features"], entry
        script = path.parent / f"{name}.sh"
        assert script.is_file(), f"{script} is missing"
        assert os.access(script, os.X_OK), f"{script} is not executable"
        body = script.read_text()
        assert "source dev-container-features-test-lib" in body
        assert body.rstrip().endswith("reportResults")
    helpers = {"checks.sh"}
    scripts = {p.name for p in path.parent.glob("*.sh")} - helpers
    assert scripts == {f"{name}.sh" for name in scenarios}, "a script without a scenario"


def test_each_feature_has_a_non_default_scenario_and_global_has_all_five() -> None:
    for feature in FEATURE_IDS:
        scenarios = json.loads((TESTS / feature / "scenarios.json").read_text())
        assert any(s["features"].get(feature) for s in scenarios.values()), feature
    global_scenarios = json.loads((TESTS / "_global" / "scenarios.json").read_text())
    bases = {
        s["image"] for s in global_scenarios.values() if set(s["features"]) == set(FEATURE_IDS)
    }
    assert {"isofeat-test/bookworm", "isofeat-test/bookworm-uid1001"} <= bases


# --- documentation ---------------------------------------------------------------------------


@pytest.mark.parametrize("feature", FEATURE_IDS)
def test_notes_document_every_option_with_an_example(feature: str) -> None:
    notes = (SRC / feature / "NOTES.md").read_text()
    for option_id in feature_json(feature).get("options", {}):
        assert f"`{option_id}`" in notes, f"NOTES.md does not document {option_id}"
    assert '"features"' in notes and f"/{feature}:1" in notes, "an example devcontainer.json"


# --- the agent team --------------------------------------------------------------------------


def frontmatter(path: Path) -> tuple[dict[str, Any], str]:
    import yaml

    text = path.read_text()
    assert text.startswith("---\n"), f"{path} has no YAML frontmatter"
    head, body = text[4:].split("\n---\n", 1)
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data, body


def test_the_team_has_the_seven_subagents() -> None:
    assert sorted(p.stem for p in (SRC / "agent-team" / "agents").glob("*.md")) == sorted(SUBAGENTS)


@pytest.mark.parametrize("name", SUBAGENTS)
def test_subagent_files_are_valid(name: str) -> None:
    data, body = frontmatter(SRC / "agent-team" / "agents" / f"{name}.md")
    assert set(data) == {"name", "description", "tools", "model"}
    assert data["name"] == name
    assert len(data["description"]) > 80, "the description is how Claude picks the agent"
    tools = {t.strip() for t in data["tools"].split(",")}
    assert tools <= CLAUDE_TOOLS, tools - CLAUDE_TOOLS
    assert data["model"] in CLAUDE_MODELS
    assert len(body.split()) > 150, "a real prompt, not a stub"


def test_code_reviewer_uses_codex_non_interactively_and_cannot_edit() -> None:
    data, body = frontmatter(SRC / "agent-team" / "agents" / "code-reviewer.md")
    assert "codex exec review" in body and "codex exec --sandbox read-only" in body
    assert not {"Edit", "Write", "MultiEdit"} & {t.strip() for t in data["tools"].split(",")}


def load_apply() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "agent_team_apply", SRC / "agent-team" / "apply.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_use_real_claude_code_events_and_the_notify_cli() -> None:
    apply = load_apply()
    assert set(apply.CLAUDE_HOOKS) == {"Notification", "Stop", "StopFailure"}
    commands = {
        event: [h["command"] for group in groups for h in group["hooks"]]
        for event, groups in apply.CLAUDE_HOOKS.items()
    }
    assert commands["Notification"] == [
        "isofeat notify send --from-hook claude --urgency clarification"
    ]
    assert commands["Stop"] == ["isofeat notify send --from-hook claude --urgency complete"]
    assert commands["StopFailure"][0].startswith("isofeat notify send --urgency error ")
    assert apply.CODEX_NOTIFY == ["isofeat", "notify", "send", "--from-hook", "codex"]


def test_the_hook_commands_parse_with_the_real_cli() -> None:
    # The exact argv each hook runs must be accepted by `isofeat notify send`.
    import shlex

    from isofeat.cli import build_parser

    apply = load_apply()
    parser = build_parser()
    for groups in apply.CLAUDE_HOOKS.values():
        for group in groups:
            for hook in group["hooks"]:
                argv = shlex.split(hook["command"])
                assert argv[0] == "isofeat"
                args = parser.parse_args(argv[1:])
                assert args.urgency in {"clarification", "complete", "error"}
    args = parser.parse_args([*apply.CODEX_NOTIFY[1:], '{"type": "agent-turn-complete"}'])
    assert args.from_hook == "codex"


USER_SETTINGS = {
    "model": "opus",
    "permissions": {"allow": ["Bash(npm test:*)"]},
    "hooks": {
        "PostToolUse": [
            {"matcher": "Edit|Write", "hooks": [{"type": "command", "command": "make fmt"}]}
        ],
        "Stop": [
            {
                "hooks": [
                    {"type": "command", "command": "say done"},
                    {"type": "command", "command": "isofeat notify send --urgency info old"},
                ]
            }
        ],
    },
}


def test_settings_merge_keeps_the_users_hooks_and_is_idempotent(tmp_path: Path) -> None:
    apply = load_apply()
    path = tmp_path / ".claude" / "settings.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(USER_SETTINGS))
    apply.install_claude_settings(tmp_path / ".claude")
    merged = json.loads(path.read_text())
    assert merged["model"] == "opus"
    assert merged["permissions"] == USER_SETTINGS["permissions"]
    assert merged["hooks"]["PostToolUse"] == USER_SETTINGS["hooks"]["PostToolUse"]
    stop_commands = [h["command"] for g in merged["hooks"]["Stop"] for h in g["hooks"]]
    assert "say done" in stop_commands
    assert "isofeat notify send --urgency info old" not in stop_commands, "our old entry replaced"
    assert "isofeat notify send --from-hook claude --urgency complete" in stop_commands
    assert "StopFailure" in merged["hooks"] and "Notification" in merged["hooks"]
    before = path.read_bytes()
    apply.install_claude_settings(tmp_path / ".claude")
    assert path.read_bytes() == before


def test_settings_merge_refuses_broken_json(tmp_path: Path) -> None:
    apply = load_apply()
    path = tmp_path / ".claude" / "settings.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"model": "opus",}')
    with pytest.raises(apply.ApplyError, match="not valid JSON"):
        apply.install_claude_settings(tmp_path / ".claude")
    assert path.read_text() == '{"model": "opus",}'


def test_codex_notify_is_added_before_the_first_table(tmp_path: Path) -> None:
    apply = load_apply()
    path = tmp_path / ".codex" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('model = "o3"\n\n[mcp_servers.docs]\ncommand = "docs-mcp"\n')
    apply.install_codex_notify(tmp_path / ".codex")
    text = path.read_text()
    if sys.version_info >= (3, 11):
        import tomllib

        data = tomllib.loads(text)
        assert data["notify"] == apply.CODEX_NOTIFY
        assert data["model"] == "o3" and data["mcp_servers"]["docs"]["command"] == "docs-mcp"
    apply.install_codex_notify(tmp_path / ".codex")
    assert path.read_text() == text, "idempotent"


def test_codex_notify_of_the_user_is_kept(tmp_path: Path) -> None:
    apply = load_apply()
    path = tmp_path / ".codex" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('notify = ["notify-send", "Codex"]\n')
    apply.install_codex_notify(tmp_path / ".codex")
    assert path.read_text() == 'notify = ["notify-send", "Codex"]\n'


def test_agent_files_edited_by_the_user_are_kept(tmp_path: Path) -> None:
    apply = load_apply()
    apply.install_agents(tmp_path / ".claude", ["code-reviewer", "qa-engineer"])
    agents = tmp_path / ".claude" / "agents"
    assert (agents / "code-reviewer.md").read_bytes() == (
        SRC / "agent-team" / "agents" / "code-reviewer.md"
    ).read_bytes()
    (agents / "qa-engineer.md").write_text("---\nname: qa-engineer\n---\nmine\n")
    (agents / "code-reviewer.md").write_text("stale copy of an older team version")
    manifest = json.loads((agents / ".isofeat-agent-team.json").read_text())
    # Pretend the stale copy is what an earlier version installed: it is updated.
    import hashlib

    manifest["code-reviewer"] = hashlib.sha256(b"stale copy of an older team version").hexdigest()
    (agents / ".isofeat-agent-team.json").write_text(json.dumps(manifest))
    apply.install_agents(tmp_path / ".claude", ["code-reviewer", "qa-engineer"])
    assert (agents / "qa-engineer.md").read_text().endswith("mine\n"), "the user's edit stays"
    assert "codex exec" in (agents / "code-reviewer.md").read_text(), "our old copy is updated"


def test_apply_script_end_to_end_with_a_staged_config(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    shutil.copytree(SRC / "agent-team" / "agents", stage / "agents")
    shutil.copy(SRC / "agent-team" / "apply.py", stage / "apply")
    (stage / "config.json").write_text('{"agents": ["technical-lead"], "notifyHooks": false}')
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in {"CLAUDE_CONFIG_DIR", "CODEX_HOME"}}
    result = subprocess.run(
        [sys.executable, str(stage / "apply"), "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (home / ".claude" / "agents").glob("*.md")] == ["technical-lead.md"]
    assert not (home / ".claude" / "settings.json").exists()
    assert not (home / ".codex").exists()


def test_apply_follows_claude_config_dir(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    shutil.copytree(SRC / "agent-team" / "agents", stage / "agents")
    shutil.copy(SRC / "agent-team" / "apply.py", stage / "apply")
    (stage / "config.json").write_text('{"agents": ["qa-engineer"], "notifyHooks": true}')
    env = {
        **os.environ,
        "CLAUDE_CONFIG_DIR": str(tmp_path / "cfg"),
        "CODEX_HOME": str(tmp_path / "cx"),
    }
    result = subprocess.run(
        [sys.executable, str(stage / "apply"), "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cfg" / "agents" / "qa-engineer.md").is_file()
    assert "isofeat notify send" in (tmp_path / "cfg" / "settings.json").read_text()
    assert "isofeat" in (tmp_path / "cx" / "config.toml").read_text()
    assert not (tmp_path / "home").exists()


# --- the collection --------------------------------------------------------------------------


def test_collection_equals_what_devcontainer_features_package_generates(tmp_path: Path) -> None:
    cli = shutil.which("devcontainer") or str(REPO / ".venv" / "bin" / "devcontainer")
    if not Path(cli).exists():
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("the devcontainer CLI is missing: run scripts/bootstrap")
        pytest.skip("the devcontainer CLI is not installed (npm install -g @devcontainers/cli)")
    # Package a copy without the git-ignored wheels: the collection holds metadata only.
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("wheels"))
    result = subprocess.run(
        [cli, "features", "package", str(src), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    generated = json.loads((tmp_path / "out" / "devcontainer-collection.json").read_text())
    committed = json.loads((REPO / "devcontainer-collection.json").read_text())
    assert committed == generated, (
        "devcontainer-collection.json drifted from features/src; regenerate it with: "
        "devcontainer features package features/src -o /tmp/pkg && "
        "cp /tmp/pkg/devcontainer-collection.json ."
    )

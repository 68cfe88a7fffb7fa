#!/bin/bash
# agent-team alone: no sandbox user at build time, so the postCreateCommand installed the team
# into the remote user's home (root here).
source dev-container-features-test-lib

A="$HOME/.claude/agents"
check "seven subagents installed" test "$(ls "$A"/*.md | wc -l)" = 7
check "every subagent has name, description, tools, model" python3 - "$A" <<'PY'
import pathlib, sys
for f in pathlib.Path(sys.argv[1]).glob("*.md"):
    text = f.read_text()
    assert text.startswith("---\n"), f
    front = text.split("---\n")[1]
    keys = {line.split(":", 1)[0] for line in front.splitlines() if ":" in line}
    assert {"name", "description", "tools", "model"} <= keys, (f, keys)
    assert f"name: {f.stem}\n" in front, f
PY
check "hooks wired to isofeat notify" python3 - "$HOME/.claude/settings.json" <<'PY'
import json, sys
hooks = json.load(open(sys.argv[1]))["hooks"]
def commands(event):
    return [h["command"] for g in hooks[event] for h in g["hooks"]]
assert any("--from-hook claude --urgency clarification" in c for c in commands("Notification"))
assert any("--urgency complete" in c for c in commands("Stop"))
assert any("--urgency error" in c for c in commands("StopFailure"))
PY
check "codex notify wired" python3 -c 'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); assert d["notify"][:3]==["isofeat","notify","send"], d' "$HOME/.codex/config.toml"
check "applying again changes nothing" bash -c '
    before="$(cat ~/.claude/settings.json ~/.codex/config.toml ~/.claude/agents/*.md | sha256sum)"
    /usr/local/share/isofeat/agent-team/apply >/dev/null
    [ "$before" = "$(cat ~/.claude/settings.json ~/.codex/config.toml ~/.claude/agents/*.md | sha256sum)" ]'

reportResults

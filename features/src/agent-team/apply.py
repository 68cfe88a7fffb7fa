#!/usr/bin/env python3
"""Install the isofeat agent team into a user's home, merging with what is there.

Installed by the agent-team Feature as /usr/local/share/isofeat/agent-team/apply and run twice:
at image build time for the sandbox user, and as the postCreateCommand for the remote user, so
that homes whose ~/.claude or ~/.codex is a volume (kept across rebuilds) get the current team.

What it does, never overwriting the user's own work:
Folders follow CLAUDE_CONFIG_DIR and CODEX_HOME when they are set, as the agents do.

- ~/.claude/agents/<name>.md: written when missing; updated when it is still exactly what an
  earlier run wrote (hashes kept in ~/.claude/agents/.isofeat-agent-team.json); left alone,
  with a note, when the user changed it.
- ~/.claude/settings.json: our hook entries (commands starting with "isofeat notify send") are
  replaced by the current ones; every other key and hook is kept as it was.
- ~/.codex/config.toml: the top-level `notify` is set to isofeat's command unless the user has
  a notify of their own, which is kept.

Standard library only: it runs in images that have nothing but python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUR_COMMAND_PREFIX = "isofeat notify send"
MANIFEST = ".isofeat-agent-team.json"
CODEX_NOTIFY = ["isofeat", "notify", "send", "--from-hook", "codex"]
HOOK_TIMEOUT_S = 10

# Claude Code hook events (https://code.claude.com/docs/en/hooks): Notification fires when Claude
# needs the user (permission prompt, idle prompt, MCP elicitation); Stop when the main agent
# finished its turn; StopFailure when a turn ended on an API error (rate limit, authentication,
# billing, server). The command reads the hook's JSON from stdin (--from-hook claude).
CLAUDE_HOOKS: dict[str, list[dict[str, Any]]] = {
    "Notification": [
        {
            "matcher": "permission_prompt|idle_prompt|elicitation_dialog",
            "hooks": [
                {
                    "type": "command",
                    "command": "isofeat notify send --from-hook claude --urgency clarification",
                    "timeout": HOOK_TIMEOUT_S,
                }
            ],
        }
    ],
    "Stop": [
        {
            "hooks": [
                {
                    "type": "command",
                    "command": "isofeat notify send --from-hook claude --urgency complete",
                    "timeout": HOOK_TIMEOUT_S,
                }
            ],
        }
    ],
    "StopFailure": [
        {
            "hooks": [
                {
                    "type": "command",
                    "command": "isofeat notify send --urgency error"
                    " --title 'Claude Code stopped on an error'"
                    " 'An API error (rate limit, authentication, billing or server) ended the"
                    " turn. Open the session to see it.'",
                    "timeout": HOOK_TIMEOUT_S,
                }
            ],
        }
    ],
}


class ApplyError(Exception):
    """A file we must not touch (invalid JSON/TOML the user wrote)."""


def log(message: str) -> None:
    print(f"agent-team: {message}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write beside the target and rename, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_agents(claude_dir: Path, names: list[str]) -> None:
    target = claude_dir / "agents"
    target.mkdir(parents=True, exist_ok=True)
    manifest_path = target / MANIFEST
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            manifest = {}
    except (FileNotFoundError, ValueError):
        manifest = {}
    for name in names:
        source = HERE / "agents" / f"{name}.md"
        new = source.read_bytes()
        dest = target / f"{name}.md"
        if dest.is_symlink():
            log(f"leaving {dest} alone: it is a symlink")
            continue
        if dest.exists():
            current = dest.read_bytes()
            if current == new:
                manifest[name] = sha256(new)
                continue
            if manifest.get(name) != sha256(current):
                log(f"keeping your edited {dest} (the team's version is in {source})")
                continue
        atomic_write(dest, new.decode("utf-8"))
        manifest[name] = sha256(new)
        log(f"installed subagent {name}")
    atomic_write(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _is_ours(hook: Any) -> bool:
    return (
        isinstance(hook, dict)
        and isinstance(hook.get("command"), str)
        and hook["command"].startswith(OUR_COMMAND_PREFIX)
    )


def merge_hooks(settings: dict[str, Any]) -> dict[str, Any]:
    """Return settings with our hook entries current and every other entry untouched."""
    hooks = settings.get("hooks")
    if hooks is None:
        hooks = {}
    if not isinstance(hooks, dict):
        raise ApplyError('"hooks" is not an object')
    for event, groups in hooks.items():
        if not isinstance(groups, list):
            raise ApplyError(f'"hooks.{event}" is not a list')
    # Drop earlier versions of our entries everywhere, then add the current ones.
    cleaned: dict[str, Any] = {}
    for event, groups in hooks.items():
        kept_groups = []
        for group in groups:
            if isinstance(group, dict) and isinstance(group.get("hooks"), list):
                inner = [hook for hook in group["hooks"] if not _is_ours(hook)]
                if not inner and group["hooks"]:
                    continue  # the group held only our hooks
                group = {**group, "hooks": inner}
            kept_groups.append(group)
        if kept_groups:
            cleaned[event] = kept_groups
    for event, groups in CLAUDE_HOOKS.items():
        cleaned.setdefault(event, [])
        cleaned[event].extend(json.loads(json.dumps(groups)))
    return {**settings, "hooks": cleaned}


def install_claude_settings(claude_dir: Path) -> None:
    path = claude_dir / "settings.json"
    if path.is_symlink():
        log(f"leaving {path} alone: it is a symlink")
        return
    settings: dict[str, Any] = {}
    mode = 0o644
    if path.exists():
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o777
        if text.strip():
            try:
                loaded = json.loads(text)
            except ValueError as err:
                raise ApplyError(f"{path} is not valid JSON ({err}); fix it and rerun") from None
            if not isinstance(loaded, dict):
                raise ApplyError(f"{path} does not hold a JSON object; fix it and rerun")
            settings = loaded
    merged = merge_hooks(settings)
    if merged != settings or not path.exists():
        atomic_write(path, json.dumps(merged, indent=2) + "\n", mode)
        log(f"wired Claude Code hooks in {path} to isofeat notify")


_TOP_NOTIFY = re.compile(r"^\s*notify\s*=")
_TABLE = re.compile(r"^\s*\[")


def _top_level_notify_line(lines: list[str]) -> int | None:
    for index, line in enumerate(lines):
        if _TABLE.match(line):
            return None
        if _TOP_NOTIFY.match(line):
            return index
    return None


def install_codex_notify(codex_dir: Path) -> None:
    path = codex_dir / "config.toml"
    if path.is_symlink():
        log(f"leaving {path} alone: it is a symlink")
        return
    ours = "notify = " + json.dumps(CODEX_NOTIFY)
    comment = "# isofeat agent-team: Codex calls this with a JSON summary after each turn"
    if not path.exists():
        atomic_write(path, f"{comment}\n{ours}\n", 0o600)
        log(f"wired Codex notify in {path}")
        return
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib  # Python 3.11+

        current = tomllib.loads(text).get("notify")
    except ModuleNotFoundError:
        current = None
    except ValueError as err:
        raise ApplyError(f"{path} is not valid TOML ({err}); fix it and rerun") from None
    lines = text.splitlines()
    index = _top_level_notify_line(lines)
    if current == CODEX_NOTIFY or (index is not None and lines[index].strip() == ours):
        return
    if index is not None:
        if "isofeat" in lines[index]:
            lines[index] = ours  # an earlier isofeat version of the line
        else:
            log(f"keeping your own notify in {path}; isofeat's would be: {ours}")
            return
    else:
        # Top-level keys must come before the first [table]; the top of the file always is.
        lines[0:0] = [comment, ours]
    atomic_write(path, "\n".join(lines) + "\n", path.stat().st_mode & 0o777)
    log(f"wired Codex notify in {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home(), help="home to install into")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a settings file cannot be merged (build time); otherwise warn",
    )
    args = parser.parse_args(argv)
    config = json.loads((HERE / "config.json").read_text(encoding="utf-8"))
    home: Path = args.home
    # The agents' own variables move their folders; follow them like the agents do.
    claude_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or home / ".claude")
    codex_dir = Path(os.environ.get("CODEX_HOME") or home / ".codex")
    try:
        install_agents(claude_dir, list(config["agents"]))
        if config.get("notifyHooks", True):
            install_claude_settings(claude_dir)
            install_codex_notify(codex_dir)
    except ApplyError as err:
        print(f"agent-team: {'error' if args.strict else 'warning'}: {err}", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

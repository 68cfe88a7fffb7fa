"""``isofeat notify send``: write one notification file into the environment's folder.

Runs inside the sandbox, often from an agent hook, so it imports only the standard library
and the light parts of isofeat. It can read Claude Code's hook JSON from stdin and Codex's
``notify`` JSON from its last argument, and maps them onto a notification.

Claude Code treats exit code 2 from a ``Stop`` hook as "do not stop" and feeds stderr back
to the model, so in hook mode every failure exits 1 instead (a non-blocking error).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from isofeat import atomic
from isofeat.envvars import ISOFEAT_NOTIFY_DIR, ISOFEAT_NOTIFY_SOURCE
from isofeat.errors import IsofeatError
from isofeat.notify import (
    CONTAINER_NOTIFY_DIR,
    HOOK_KINDS,
    MAX_PENDING_BYTES,
    MAX_PENDING_ENTRIES,
    URGENCIES,
    folder_usage,
)
from isofeat.notify.message import MAX_FILE_BYTES, Notification, build

# Hook JSON can carry a long last assistant message; we keep 2000 characters of it anyway.
MAX_HOOK_INPUT_BYTES = 1024 * 1024
EXIT_HOOK_FAILED = 1


def notify_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder ``send`` writes into: ``$ISOFEAT_NOTIFY_DIR`` or ``/run/isofeat/notify``."""
    return Path(environ.get(ISOFEAT_NOTIFY_DIR) or CONTAINER_NOTIFY_DIR)


def write_notification(note: Notification, directory: Path) -> Path:
    """Write ``note`` atomically into ``directory`` and return the final path.

    The temporary file starts with "." (the watcher ignores those) and is renamed into
    place, so the watcher sees a whole file or nothing. Mode 0644: the host user, who is
    usually not uid 1001, must be able to read it.
    """
    if not directory.is_dir():
        raise IsofeatError(
            f"notification folder {directory} does not exist",
            fix=f"run this inside an isofeat sandbox (the folder is mounted at "
            f"{CONTAINER_NOTIFY_DIR}), or set {ISOFEAT_NOTIFY_DIR} to an existing folder",
        )
    data = note.to_json_bytes()
    if len(data) > MAX_FILE_BYTES:  # cannot happen with the caps in message.py; keep it so
        raise IsofeatError(f"notification is {len(data)} bytes, over {MAX_FILE_BYTES}")
    _check_room(directory, len(data))
    path = directory / f"{time.time_ns()}-{note.id}.json"
    try:
        atomic.write_text(path, data.decode("utf-8"), mode=0o644)
    except PermissionError as err:
        raise IsofeatError(
            f"cannot write into {directory}: {err.strerror}",
            fix="the folder must be writable by this user; recreate the environment "
            "(isofeat init) so its notification folder gets the right owner and mode",
        ) from None
    return path


def _read_hook_stdin(stdin: IO[str]) -> dict[str, Any]:
    if stdin.isatty():
        raise IsofeatError(
            "--from-hook claude reads the hook's JSON from stdin, but stdin is a terminal",
            fix="call it from a Claude Code hook, or pipe JSON into it",
        )
    return _parse_hook_json(stdin.read(MAX_HOOK_INPUT_BYTES), "stdin")


def _parse_hook_json(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise IsofeatError(
            f"hook input on {where} is not valid JSON",
            fix="check the hook configuration: the agent passes JSON, nothing else",
        ) from None
    if not isinstance(doc, dict):
        raise IsofeatError(f"hook input on {where} is not a JSON object")
    return doc


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    return value if isinstance(value, str) else ""


def map_claude_hook(doc: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """Map a Claude Code hook input to ``(urgency, title, message)``; ``None``: not ours.

    Fields (Claude Code hooks reference, https://code.claude.com/docs/en/hooks):
    every event has ``session_id``, ``transcript_path``, ``cwd``, ``hook_event_name``;
    ``Notification`` adds ``message``, ``title`` and ``notification_type``
    (``permission_prompt``, ``idle_prompt``, ...); ``Stop``/``SubagentStop`` add
    ``stop_hook_active`` and, in recent versions, ``last_assistant_message``.
    """
    event = _str(doc, "hook_event_name")
    if event == "Notification":
        kind = _str(doc, "notification_type")
        # A permission prompt stops all work until the user answers; other prompts wait
        # for input but are not blocking anything else.
        urgency = "blocked" if kind == "permission_prompt" else "clarification"
        if kind == "auth_success":
            urgency = "info"
        title = _str(doc, "title") or "Claude Code needs you"
        message = _str(doc, "message") or "Claude Code is waiting for your input."
        return urgency, title, message
    if event in ("Stop", "SubagentStop"):
        urgency = "complete" if event == "Stop" else "info"
        title = "Claude Code finished" if event == "Stop" else "Claude Code subagent finished"
        message = _str(doc, "last_assistant_message") or "Claude finished its turn."
        return urgency, title, message
    return None


def map_codex_notify(doc: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """Map a Codex ``notify`` payload to ``(urgency, title, message)``; ``None``: not ours.

    Codex runs the configured program with one extra argument, a JSON string such as
    ``{"type": "agent-turn-complete", "thread-id": ..., "turn-id": ..., "cwd": ...,
    "input-messages": [...], "last-assistant-message": ...}`` (openai/codex docs/config.md,
    section ``notify``); ``agent-turn-complete`` is the only type it sends today.
    """
    kind = _str(doc, "type")
    if kind == "agent-turn-complete":
        message = _str(doc, "last-assistant-message") or "Codex finished its turn."
        return "complete", "Codex finished", message
    if "approval" in kind:
        return "blocked", "Codex needs approval", _str(doc, "message") or kind
    return None


def _check_room(directory: Path, size: int) -> None:
    """Refuse to add a file to a full folder (the bound in docs/notifications.md).

    A full folder means the host watcher is not running or the sandbox is flooding it; the
    watcher would drop the excess anyway, so saying so here is kinder than writing it.
    """
    try:
        entries, used = folder_usage(directory)
    except OSError:
        return  # cannot list (no read permission): the write below says what is wrong
    if entries >= MAX_PENDING_ENTRIES or used + size > MAX_PENDING_BYTES:
        raise IsofeatError(
            f"notification folder {directory} is full ({entries} entries, {used} bytes; the "
            f"bound is {MAX_PENDING_ENTRIES} entries and {MAX_PENDING_BYTES} bytes)",
            fix="the host's `isofeat notify watch` empties it: start it on the host, or wait",
        )


def send(
    urgency: str | None,
    title: str | None,
    message: str | None,
    *,
    from_hook: str | None = None,
    as_json: bool = False,
    environ: Mapping[str, str] = os.environ,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """The ``send`` verb. In hook mode every :class:`IsofeatError` carries exit code 1,
    never 2 (see module doc)."""
    err = stderr or sys.stderr
    if from_hook is None:
        return _send(urgency, title, message, None, as_json, environ, stdin, stdout, err)
    try:
        return _send(urgency, title, message, from_hook, as_json, environ, stdin, stdout, err)
    except IsofeatError as problem:
        # The same message, on the CLI's one error path, with the exit code hooks need.
        raise IsofeatError(problem.message, fix=problem.fix, lines=problem.lines,
                           code=EXIT_HOOK_FAILED) from None


def _send(
    urgency: str | None,
    title: str | None,
    message: str | None,
    from_hook: str | None,
    as_json: bool,
    environ: Mapping[str, str],
    stdin: IO[str] | None,
    stdout: IO[str] | None,
    err: IO[str],
) -> int:
    out = stdout or sys.stdout
    source = environ.get(ISOFEAT_NOTIFY_SOURCE, "")
    if from_hook is not None:
        if from_hook == "claude":
            mapped = map_claude_hook(_read_hook_stdin(stdin or sys.stdin))
        elif from_hook == "codex":
            if not message:
                raise IsofeatError(
                    "--from-hook codex expects Codex's notification JSON as the last argument",
                    fix='set notify = ["isofeat", "notify", "send", "--from-hook", "codex"] '
                    "in ~/.codex/config.toml; Codex appends the JSON",
                )
            mapped = map_codex_notify(_parse_hook_json(message, "the command line"))
        else:
            raise IsofeatError(
                f"unknown hook kind {from_hook!r}", fix=f"use one of: {', '.join(HOOK_KINDS)}"
            )
        if mapped is None:
            # An event we do not notify about (a hook wired to the wrong event): not an error.
            print("isofeat notify send: hook event ignored (not a notification)", file=err)
            return 0
        hook_urgency, hook_title, hook_message = mapped
        # Explicit options win over the mapping, so a hook line can force an urgency.
        urgency = urgency or hook_urgency
        title = title if title is not None else hook_title
        message = hook_message
        source = source or from_hook
    if not urgency:
        raise IsofeatError("--urgency is required", fix=f"pass --urgency {{{','.join(URGENCIES)}}}")
    if not message:
        raise IsofeatError("MESSAGE is required", fix="pass the message text as the last argument")
    try:
        note, notes = build(urgency, message, title or "", source)
    except ValueError as problem:
        raise IsofeatError(str(problem), fix="pass a message with visible text") from None
    for text in notes:
        print(f"isofeat notify send: {text}", file=err)
    path = write_notification(note, notify_dir(environ))
    if as_json:
        print(json.dumps({"id": note.id, "path": str(path), "urgency": note.urgency}), file=out)
    elif from_hook is None:
        print(f"notification {note.id} queued in {path.parent}", file=out)
    return 0

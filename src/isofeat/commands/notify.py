"""``isofeat notify send`` (in a sandbox) and ``isofeat notify watch`` (on the host).

Registration only: the verbs import their modules when they run. ``send`` runs inside agent
hooks, and nothing here may pull in jsonschema or watchdog for it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# The package's __init__ is light (stdlib only); the send/watch modules are not imported here.
from isofeat import argtypes
from isofeat.notify import BACKENDS, HOOK_KINDS, URGENCIES


def send_verb(
    urgency: str | None,
    title: str | None,
    message: str | None,
    from_hook: str | None,
    as_json: bool,
) -> int:
    from isofeat.notify.send import send

    return send(urgency, title, message, from_hook=from_hook, as_json=as_json)


def watch_verb(root: str | None, backend: str, once: bool, as_json: bool,
               on: str | None = None) -> int:
    if on is not None:  # another machine's notifications, forwarded over ssh (isofeat.remote)
        from isofeat import remote

        return remote.watch(on, backend, once, as_json)
    from isofeat.envvars import notify_root
    from isofeat.errors import IsofeatError
    from isofeat.notify.watch import watch

    folder = Path(root) if root else notify_root(os.environ)
    if folder.exists() and not folder.is_dir():
        raise IsofeatError(f"--root {folder}: not a folder",
                           fix="give the folder of environment folders, or leave --root out")
    return watch(folder, backend, once=once, as_json=as_json)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    notify = subparsers.add_parser(
        "notify",
        help="notifications from sandboxes to the host",
        description="Sandboxes drop notifications into their own folder; the host shows them.",
    )
    sub = notify.add_subparsers(dest="notify_verb", metavar="VERB", required=True)

    send = sub.add_parser(
        "send",
        help="queue a notification for the host (run inside a sandbox)",
        description="Write one notification file atomically into $ISOFEAT_NOTIFY_DIR "
        "(default /run/isofeat/notify). Control characters are removed; the title is cut at "
        "200 characters and the message at 2000.",
    )
    send.add_argument("--urgency", choices=URGENCIES, help="required unless --from-hook is given")
    send.add_argument("--title", help="short heading (optional)")
    send.add_argument(
        "--from-hook",
        choices=HOOK_KINDS,
        dest="from_hook",
        help="claude: read a Claude Code Notification/Stop hook's JSON from stdin; "
        "codex: MESSAGE is the JSON Codex's notify setting appends. Failures exit 1, never 2.",
    )
    send.add_argument(
        "--json",
        action="store_true",
        dest="as_json",
        help="print the queued notification's id and path as JSON",
    )
    send.add_argument("message", nargs="?", metavar="MESSAGE")
    send.set_defaults(
        func=lambda a: send_verb(a.urgency, a.title, a.message, a.from_hook, a.as_json)
    )

    watch = sub.add_parser(
        "watch",
        help="show and remove notifications from every environment (run on the host)",
        description="Watch every environment's notification folder, show each notification "
        "on the desktop (notify-send / osascript) or stdout, and remove it. The folder "
        "content is treated as hostile.",
    )
    watch.add_argument(
        "--once",
        action="store_true",
        help="process what is there now and exit (for scripts and cron)",
    )
    watch.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: the desktop notifier when available, else stdout",
    )
    watch.add_argument(
        "--root",
        type=argtypes.text,
        metavar="DIR",
        help="folder of environment folders (default $XDG_STATE_HOME/isofeat/notify)",
    )
    watch.add_argument(
        "--json",
        action="store_true",
        dest="as_json",
        help="print one JSON object per notification on stdout",
    )
    watch.add_argument(
        "--on",
        type=argtypes.text,
        metavar="HOST",
        help="watch the environments of another machine over ssh (tasks made with "
        "`task new --on HOST`); each line is checked again here",
    )
    watch.set_defaults(
        func=lambda a: watch_verb(a.root, a.backend, a.once, a.as_json, a.on)
    )

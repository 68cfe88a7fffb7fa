"""The notification file format, and the sanitiser every displayed string passes through.

One notification is one UTF-8 JSON object (schema version 1, :data:`SCHEMA`) of at most
:data:`MAX_FILE_BYTES`. The sender caps and cleans what it writes, but the host treats the
file as hostile anyway: it is validated against :data:`SCHEMA` and every field is cleaned
again with :func:`clean_text` right before it is shown.

jsonschema is imported inside :func:`validate` only: ``send`` runs in agent hooks and must
start fast.
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from isofeat.notify import URGENCIES

SCHEMA_VERSION = 1

# Caps, in characters after cleaning. Chosen so that the largest possible file (every
# character 4 bytes of UTF-8) stays under MAX_FILE_BYTES: 4 * (2000 + 200 + 32) + keys < 16 KiB.
MAX_TITLE_CHARS = 200
MAX_MESSAGE_CHARS = 2000
MAX_SOURCE_CHARS = 32
MAX_FILE_BYTES = 16 * 1024

TRUNCATION_MARK = "\u2026"  # "…": tells the reader the text was cut

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://isofeat.invalid/schemas/notification-v1.json",
    "title": "isofeat notification, version 1",
    "type": "object",
    "required": ["v", "id", "urgency", "message", "created"],
    # Closed: everything the watcher accepts is something it knows how to clean and show.
    # A new field means a new schema version.
    "additionalProperties": False,
    "properties": {
        "v": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "urgency": {"enum": list(URGENCIES)},
        "title": {"type": "string", "maxLength": MAX_TITLE_CHARS},
        "message": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS},
        "created": {
            "type": "string",
            "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$",
        },
        "source": {
            "type": "string",
            "maxLength": MAX_SOURCE_CHARS,
            "pattern": "^[a-z0-9][a-z0-9._-]*$",
        },
        "truncated": {"type": "boolean"},
    },
}

# ANSI/VT escape sequences: CSI (ESC [ ... final), OSC/DCS/APC/PM/SOS strings (terminated
# by BEL or ESC \, or unterminated up to the end), and two-byte ESC sequences. Their 8-bit
# C1 forms (0x9B CSI, 0x9D OSC, ...) are covered too. What remains after this is removed
# character by character below, so a sequence this misses still loses its ESC byte.
_ANSI_RE = re.compile(
    r"""
    (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?             # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])     # OSC, DCS, SOS, PM, APC ...
      .*?(?:\x07|\x1b\\|\x9c|$)                   # ... up to their terminator
    | \x1b[ -/]*[0-~]?                            # other ESC sequences
    """,
    re.VERBOSE | re.DOTALL,
)

# Unicode categories never shown: Cc (C0 controls, DEL, C1 controls), Cf (format characters:
# bidi overrides and isolates U+202A-202E/U+2066-2069, LRM/RLM, zero-width characters that
# can hide or reorder text), Cs (lone surrogates, which json.loads accepts and which would
# crash a UTF-8 terminal write). Zl/Zp (U+2028/2029) and C0 whitespace become a space: a
# message must not start a new line that looks like another environment's notification.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_SPACE_CATEGORIES = frozenset({"Zl", "Zp"})
_SPACE_CONTROLS = frozenset("\t\n\r\v\f")


def clean_text(text: str, limit: int) -> tuple[str, bool]:
    """Return ``text`` without escape sequences or control characters, cut to ``limit`` chars.

    The second value says whether it was cut. Runs of whitespace collapse to one space, so
    the result is always a single line.
    """
    text = _ANSI_RE.sub("", text)
    out: list[str] = []
    for ch in text:
        if ch in _SPACE_CONTROLS:
            out.append(" ")
            continue
        category = unicodedata.category(ch)
        if category in _SPACE_CATEGORIES:
            out.append(" ")
        elif category not in _DROP_CATEGORIES:
            out.append(ch)
    cleaned = " ".join("".join(out).split())
    if len(cleaned) > limit:
        return cleaned[: max(limit - 1, 0)].rstrip() + TRUNCATION_MARK, True
    return cleaned, False


def now_rfc3339() -> str:
    """UTC time with microseconds, in the form :data:`SCHEMA` accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Notification:
    """One notification, as written by ``send`` or as accepted (and cleaned) by ``watch``."""

    urgency: str
    message: str
    title: str = ""
    source: str = ""
    id: str = ""
    created: str = ""
    truncated: bool = False

    def to_json_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "urgency": self.urgency,
            "message": self.message,
            "created": self.created,
        }
        if self.title:
            doc["title"] = self.title
        if self.source:
            doc["source"] = self.source
        if self.truncated:
            doc["truncated"] = True
        # ensure_ascii=False keeps the size bound in MAX_FILE_BYTES honest (a \uXXXX escape
        # of an astral character is 12 bytes; its UTF-8 form is 4).
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def build(
    urgency: str, message: str, title: str = "", source: str = ""
) -> tuple[Notification, list[str]]:
    """Clean and cap the sender's values into a :class:`Notification`.

    Returns the notification and a list of human-readable notes about what was cut.
    Raises ``ValueError`` for an unknown urgency or a message that is empty once cleaned.
    """
    if urgency not in URGENCIES:
        raise ValueError(f"unknown urgency {urgency!r}; choose one of {', '.join(URGENCIES)}")
    notes: list[str] = []
    clean_message, cut_message = clean_text(message, MAX_MESSAGE_CHARS)
    if not clean_message:
        raise ValueError("the message is empty once control characters are removed")
    clean_title, cut_title = clean_text(title, MAX_TITLE_CHARS)
    if cut_message:
        notes.append(f"message truncated to {MAX_MESSAGE_CHARS} characters")
    if cut_title:
        notes.append(f"title truncated to {MAX_TITLE_CHARS} characters")
    clean_source = source.strip().lower()
    if clean_source and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", clean_source[:MAX_SOURCE_CHARS]):
        notes.append(f"source {ascii(source)[:40]} is not a simple name; left out")
        clean_source = ""
    note = Notification(
        urgency=urgency,
        message=clean_message,
        title=clean_title,
        source=clean_source[:MAX_SOURCE_CHARS],
        id=secrets.token_hex(16),
        created=now_rfc3339(),
        truncated=cut_message or cut_title,
    )
    return note, notes


class InvalidNotification(ValueError):
    """The bytes of a notification file are not a valid version-1 notification."""


_validator: Any = None


def validate(data: bytes) -> Notification:
    """Parse and validate the bytes of a notification file, then clean every string field.

    Raises :class:`InvalidNotification` with a short, safe reason (no file content in it).
    """
    global _validator
    if len(data) > MAX_FILE_BYTES:
        raise InvalidNotification(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNotification("not UTF-8") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise InvalidNotification("not valid JSON") from None
    except RecursionError:
        raise InvalidNotification("JSON nested too deeply") from None
    if _validator is None:
        from jsonschema import (  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
            Draft202012Validator,
        )

        Draft202012Validator.check_schema(SCHEMA)
        _validator = Draft202012Validator(SCHEMA)
    error = next(iter(_validator.iter_errors(doc)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        # The validator's own message may quote the hostile value; name only the place and rule.
        raise InvalidNotification(f"schema violation at {ascii(where)[:60]} ({error.validator})")
    title, _ = clean_text(doc.get("title", ""), MAX_TITLE_CHARS)
    message, _ = clean_text(doc["message"], MAX_MESSAGE_CHARS)
    if not message:
        raise InvalidNotification("message is empty once control characters are removed")
    return Notification(
        urgency=doc["urgency"],
        message=message,
        title=title,
        source=doc.get("source", ""),
        id=doc["id"],
        created=doc["created"],
        truncated=bool(doc.get("truncated", False)),
    )

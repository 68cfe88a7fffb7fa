"""The security report: every attack, fault, load run and bad input that the tests try.

A test records what it tried through the ``security_report`` fixture (tests/conftest.py)::

    security_report.attack("20", "connect to the sandbox gateway on a host port",
                           expected="no answer", observed=answer, ok=answer is None)

Recording also asserts ``ok``: an entry is never a substitute for the test's own check, and
a case that got through fails the test that tried it. At the end of the run the entries are
written as JSON and as a Markdown table (``report.json``, ``report.md``) to
``$ISOFEAT_SECURITY_REPORT_DIR`` (default ``build/security-report``), and pytest prints one
summary line. ``python -m tests.security`` runs the tests that record and writes the report;
``docs/security.md`` holds the latest table.

``tried`` counts the attempts behind one row, so that a corpus (the proxy's 1,744 generated
requests) is one row and not a thousand; ``failed`` is how many of them got through.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["attack", "fault", "load", "input"]
KINDS: tuple[Kind, ...] = ("attack", "fault", "load", "input")
REPORT_DIR_VAR = "ISOFEAT_SECURITY_REPORT_DIR"
REPO = Path(__file__).resolve().parents[1]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Entry:
    kind: Kind
    #: SECURITY-CASES number ("20"), or the issue item for faults and load ("fault: proxy").
    case: str
    attempt: str
    expected: str
    observed: str
    ok: bool
    test: str
    tried: int = 1
    failed: int = 0
    #: Measured figures, e.g. {"recovery_s": 1.8}.
    figures: dict[str, float] = field(default_factory=dict)


ENTRIES: list[Entry] = []


def _clean(text: object, limit: int = 300) -> str:
    """One line of printable text: recorded output may hold anything the attacker sent."""
    flat = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Recorder:
    """Bound to one test; each call records one row and then asserts it."""

    def __init__(self, test: str) -> None:
        self.test = test

    def record(
        self, kind: Kind, case: str, attempt: str, *, expected: str, observed: object, ok: bool,
        tried: int = 1, failed: int | None = None, strict: bool = True, **figures: float,
    ) -> Entry:
        entry = Entry(
            kind=kind, case=case, attempt=_clean(attempt), expected=_clean(expected),
            observed=_clean(observed), ok=bool(ok), test=self.test, tried=tried,
            failed=(0 if ok else tried) if failed is None else failed,
            figures={k: round(float(v), 4) for k, v in figures.items()},
        )
        ENTRIES.append(entry)
        if strict:
            assert _passed(entry), _line(entry)
        return entry

    def many(self, kind: Kind, rows: list[tuple[str, str, str, object, bool]]) -> None:
        """Record every ``(case, attempt, expected, observed, ok)`` row, then assert them all,
        so that one run shows every case that got through, not only the first."""
        made = [self.record(kind, case, attempt, expected=expected, observed=observed, ok=ok,
                            strict=False) for case, attempt, expected, observed, ok in rows]
        bad = [_line(e) for e in made if not _passed(e)]
        assert not bad, "\n".join(bad)

    def attack(self, case: str, attempt: str, *, expected: str, observed: object, ok: bool,
               tried: int = 1, failed: int | None = None, **figures: float) -> None:
        self.record("attack", case, attempt, expected=expected, observed=observed, ok=ok,
                    tried=tried, failed=failed, **figures)

    def fault(self, case: str, attempt: str, *, expected: str, observed: object, ok: bool,
              **figures: float) -> None:
        self.record("fault", case, attempt, expected=expected, observed=observed, ok=ok,
                    **figures)

    def load(self, case: str, attempt: str, *, expected: str, observed: object, ok: bool,
             tried: int = 1, failed: int | None = None, **figures: float) -> None:
        self.record("load", case, attempt, expected=expected, observed=observed, ok=ok,
                    tried=tried, failed=failed, **figures)

    def bad_input(self, case: str, attempt: str, *, expected: str, observed: object,
                  ok: bool) -> None:
        self.record("input", case, attempt, expected=expected, observed=observed, ok=ok)


def _passed(entry: Entry) -> bool:
    return entry.ok and entry.failed == 0


def _line(entry: Entry) -> str:
    return (f"{entry.kind} {entry.case}: {entry.attempt}: expected {entry.expected}, "
            f"observed {entry.observed}")


def report_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(REPORT_DIR_VAR) or REPO / "build" / "security-report")


def summary(entries: list[Entry]) -> str:
    """One line: what was tried of each kind and how much got through (goal: 0)."""
    tried = Counter[str]()
    failed = Counter[str]()
    for entry in entries:
        tried[entry.kind] += entry.tried
        failed[entry.kind] += entry.failed
    words = {"attack": "attacks", "fault": "faults", "load": "load runs", "input": "bad inputs"}
    parts = [f"{tried[k]:,} {words[k]} ({failed[k]} failed)" for k in KINDS if tried[k]]
    through = sum(failed.values())
    return (f"security report: {'; '.join(parts) or 'nothing recorded'}; "
            f"{through} got through or failed")


def markdown(entries: list[Entry]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [summary(entries), "",
             "| Kind | Case | Attempt | Expected | Observed | Tried | Got through | Figures |",
             "|---|---|---|---|---|---:|---:|---|"]
    order = {k: i for i, k in enumerate(KINDS)}
    for e in sorted(entries, key=lambda e: (order[e.kind], _case_key(e.case), e.attempt)):
        figures = ", ".join(f"{k}={v:g}" for k, v in e.figures.items())
        lines.append(f"| {e.kind} | {cell(e.case)} | {cell(e.attempt)} | {cell(e.expected)} "
                     f"| {cell(e.observed)} | {e.tried:,} | {e.failed} | {cell(figures)} |")
    return "\n".join(lines) + "\n"


def _case_key(case: str) -> tuple[int, str]:
    head = case.split()[0].rstrip(":")
    return (int(head), case) if head.isdigit() else (10_000, case)


#: What each SECURITY-CASES number guards, for the per-case table in docs/security.md.
CASE_TITLES = {
    "1": "lookalike names", "2": "raw IP addresses", "3": "ports outside the policy",
    "4": "tricks that hide the real host", "5": "control characters, oversized requests",
    "6": "bad whitelist lines", "7": "direct egress", "8": "outside DNS names",
    "9": "IPv6 egress", "10": "the DinD proxy", "11": "nested containers' egress",
    "12": "another environment", "13": "privileges", "14": "writes outside the workspace",
    "15": "the host's Docker socket and mounts", "16": "hostile notification files",
    "17": "hostile names and paths to the CLI", "18": "fail closed", "19": "connection floods",
    "20": "the host's services", "21": "resource exhaustion", "22": "the user's repository",
    "23": "credentials", "24": "TLS server name against CONNECT", "25": "DNS queries leaving",
}


def case_table(entries: list[Entry]) -> str:
    """Per SECURITY-CASES number: rows, attempts and how many got through (goal 0)."""
    rows: dict[str, list[Entry]] = {}
    for e in entries:
        head = e.case.split()[0].rstrip(":")
        for case in _expand_cases(head) or [e.case]:
            rows.setdefault(case, []).append(e)
    lines = ["| Case | What | Rows | Attempts | Got through | Tests |",
             "|---|---|---:|---:|---:|---|"]
    for case in sorted(rows, key=lambda c: _case_key(c)):
        found = rows[case]
        tests = sorted({e.test.split("::")[0].removeprefix("tests/") for e in found})
        lines.append(f"| {case} | {CASE_TITLES.get(case, '')} | {len(found)} | "
                     f"{sum(e.tried for e in found):,} | {sum(e.failed for e in found)} | "
                     f"{', '.join(tests)} |")
    missing = [c for c in CASE_TITLES if c not in rows]
    if missing:
        lines.append(f"\nNot tried in this run: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def _expand_cases(head: str) -> list[str]:
    """"1-4" -> ["1", "2", "3", "4"]; "20" -> ["20"]; "fault:" -> []."""
    first, _, last = head.partition("-")
    if first.isdigit() and (not last or last.isdigit()):
        return [str(n) for n in range(int(first), int(last or first) + 1)]
    return []


def write(entries: list[Entry], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"summary": summary(entries), "entries": [asdict(e) for e in entries]}
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(markdown(entries), encoding="utf-8")
    return json_path, md_path

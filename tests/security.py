"""``python -m tests.security``: run every test that records into the security report.

It runs the attack, fault, load and bad-input tests against real containers (a Docker engine
is required, as on CI), then writes ``report.json`` and ``report.md`` to
``$ISOFEAT_SECURITY_REPORT_DIR`` (default ``build/security-report``) and prints the summary
line. Extra arguments go to pytest, e.g. ``python -m tests.security -x``.

``--update-docs`` also puts the run's tables into docs/security.md (between its report
markers) and the full table into docs/security-report.md; ``--from-report`` does only that,
from the last run's report.json (for example the one a full ``scripts/test`` run wrote).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests import report

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
START, END = "<!-- report:start -->", "<!-- report:end -->"
#: The files whose tests record into the report (tests/report.py).
SECURITY_TESTS = (
    "unit/test_bad_input.py",
    "unit/test_notify_faults.py",
    "unit/test_init_faults.py",
    "docker/test_proxy_egress.py",
    "docker/test_env_boundaries.py",
    "docker/test_dind.py",
    "docker/test_git_boundary.py",
    "docker/test_security_cases.py",
    "docker/test_faults.py",
    "docker/test_load.py",
    "docker/test_dns.py",
    "docker/test_sni.py",
    "docker/test_disk.py",
    "docker/test_secrets.py",
)


def update_docs(entries: list[report.Entry]) -> None:
    """The per-case table and every fault and load row into docs/security.md; every row
    into docs/security-report.md."""
    focus = [e for e in entries if e.kind in ("fault", "load")]
    block = "\n".join([
        START, "", f"**{report.summary(entries)}.**", "", report.case_table(entries),
        "Faults and load:", "", report.markdown(focus).split("\n", 2)[2], END,
    ])
    page = DOCS / "security.md"
    text = page.read_text(encoding="utf-8")
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: block, text,
                  flags=re.DOTALL)
    page.write_text(text, encoding="utf-8")
    full = DOCS / "security-report.md"
    full.write_text("# Security report: every row of the last published run\n\n"
                    "Written by `python -m tests.security --update-docs`; see "
                    "[security.md](security.md).\n\n" + report.markdown(entries),
                    encoding="utf-8")


def load_entries(folder: Path) -> list[report.Entry]:
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return [report.Entry(**e) for e in data["entries"]]


def main(argv: list[str]) -> int:
    docs = "--update-docs" in argv or "--from-report" in argv
    if "--from-report" in argv:
        update_docs(load_entries(report.report_dir()))
        return 0
    argv = [a for a in argv if a != "--update-docs"]
    os.environ.setdefault("ISOFEAT_REQUIRE_DOCKER", "1")
    paths = [str(HERE / name) for name in SECURITY_TESTS if (HERE / name).exists()]
    code = int(pytest.main([*paths, *argv]))
    if docs and report.ENTRIES:
        update_docs(report.ENTRIES)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

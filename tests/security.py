"""``python -m tests.security``: run every test that records into the security report.

It runs the attack, fault, load and bad-input tests against real containers (a Docker engine
is required, as on CI), then writes ``report.json`` and ``report.md`` to
``$ISOFEAT_SECURITY_REPORT_DIR`` (default ``build/security-report``) and prints the summary
line. Extra arguments go to pytest, e.g. ``python -m tests.security -x``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
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
)


def main(argv: list[str]) -> int:
    os.environ.setdefault("ISOFEAT_REQUIRE_DOCKER", "1")
    paths = [str(HERE / name) for name in SECURITY_TESTS if (HERE / name).exists()]
    return int(pytest.main([*paths, *argv]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

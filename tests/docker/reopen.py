"""`devcontainer up` for tests, reopened once after either of two known start-time failures.

1. **The host answered the self-test at start.** Seen in about one open in ten on this
   machine during busy runs: `isofeat doctor`'s host-access check found an answer at the
   sandbox gateway within seconds of start, failed, and stopped `dev`, as it must. The cause
   is not known (docs/threat-model.md, "Known limits"). Each time, this module checks that
   `dev` is really stopped, records the refusal as a fault row of the security report with
   the doctor's own line, and opens once more, as a user would. A second refusal fails.
   Since the check counts an answer only when its address answers again, this should not
   happen any more; an answer that did not repeat is printed by the passing check, and
   ``note_unrepeated`` records each one as a passing fault row, so CI shows how often.
2. **The devcontainer CLI lost the image it had just built** ("docker pull vsc-..."), seen
   once with three opens at once on the legacy builder. Not ours; reopened once.

Anything else fails at once, as before.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.report import Recorder

HOST_ANSWERED = "FAIL  host-access"
CLI_LOST_IMAGE = "Command failed: docker pull vsc-"
#: What the passing host-access check says of an answer that did not repeat (doctor.py).
UNREPEATED = "not counted, because no port of the address answered again"


def _dev_running(project: str, wait_s: float = 30) -> bool:
    """Whether ``dev`` still runs ``wait_s`` after the doctor said it stops it."""
    deadline = time.monotonic() + wait_s
    while True:
        listed = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
             "--filter", "label=com.docker.compose.service=dev"],
            capture_output=True, text=True, check=False)  # fmt: skip
        if not listed.stdout.strip():
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(1)


def reason_to_reopen(output: str) -> str | None:
    """The known failure in a failed open's output, or None."""
    for line in output.splitlines():
        if HOST_ANSWERED in line:
            return line.strip()[:600]
    if CLI_LOST_IMAGE in output:
        return "the devcontainer CLI could not find the image it had just built"
    return None


def _current_test() -> str:
    # "tests/x.py::test_y (call)": pytest's own record of what runs now.
    return os.environ.get("PYTEST_CURRENT_TEST", "unknown").split(" ")[0]


def after_failed_open(result: subprocess.CompletedProcess[str], *, project: str,
                      where: str) -> bool:
    """Whether ``result`` (a failed open) may be reopened; records what was seen."""
    reason = reason_to_reopen(f"{result.stdout}\n{result.stderr}")
    if reason is None:
        return False
    if HOST_ANSWERED in reason:
        running = _dev_running(project)
        Recorder(_current_test()).fault(
            "fault: host answered at start (case 20)",
            f"devcontainer up of {where}: the self-test found a host answer",
            expected="the self-test fails and dev is stopped before any agent runs; "
            "one reopen then passes it",
            observed=f"{reason}; dev {'STILL RUNNING' if running else 'stopped'}",
            ok=not running,
        )
    else:
        print(f"reopening {where}: {reason}")
    return True


def note_unrepeated(result: subprocess.CompletedProcess[str], *, where: str) -> None:
    """Record each host answer that the self-test printed but did not count (threat model,
    known limits), with the kernel's view of the socket, so that CI shows how often."""
    for line in f"{result.stdout}\n{result.stderr}".splitlines():
        if UNREPEATED in line:
            print(f"{where}: {line.strip()[:600]}")
            Recorder(_current_test()).fault(
                "fault: a host answer at start that did not repeat (case 20)",
                f"devcontainer up of {where}: the self-test saw an answer once",
                expected="shown with its evidence, not counted: the address stays silent "
                "when asked again",
                observed=line.strip()[:600], ok=True,
            )


def devcontainer_up(devcontainer: str, ws: Path, env: dict[str, str], *, project: str,
                    timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``devcontainer up`` of ``ws``; reopened once after a known start-time failure."""
    argv = [devcontainer, "up", "--workspace-folder", str(ws)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                            timeout=timeout)  # fmt: skip
    if result.returncode != 0 and after_failed_open(result, project=project, where=ws.name):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                                timeout=timeout)  # fmt: skip
    note_unrepeated(result, where=ws.name)
    return result

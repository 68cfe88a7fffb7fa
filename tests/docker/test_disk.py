"""What one environment can write to the host's disk (the disk part of SECURITY-CASES 21).

An environment baked from the template and brought up with Compose; as the agent (uid 1001)
``fallocate`` takes space in each place it can write, while the test watches the free space
of the host's filesystems (the one under the engine's data root and the one holding the
worktree):

- ``/tmp`` is a size-limited tmpfs (compose.yaml), ``/dev/shm`` Docker's 64 MB one: a file
  larger than it fails with "No space left on device" and the host's disk does not move.
  tmpfs pages count against the memory limit, so it is bounded twice.
- The worktree (a bind mount of a host folder) and the container's writable layer (the rest
  of the home folder, /var/tmp) are NOT bounded: the host loses what the agent allocates.
  Measured with a small file, and recorded as documented limits (docs/threat-model.md,
  "Disk"), so that this test changes when the design does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import Env

MB = 1 << 20
#: What the template gives /tmp (compose.yaml, dev's tmpfs).
TMP_SIZE = 1024 * MB
#: A small file for the unbounded places: enough to see on the host, cheap on a shared disk.
PROBE = 200 * MB


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def docker_root() -> str:
    out = subprocess.run(["docker", "info", "--format", "{{.DockerRootDir}}"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return out or "/var/lib/docker"


def test_tmp_is_bounded_and_the_rest_is_a_documented_limit(
    make_env: Callable[..., Env], security_report: Any,
) -> None:
    env = make_env("diskfill")
    tmpfs = env.inspect("dev")["HostConfig"]["Tmpfs"] or {}
    assert "/tmp" in tmpfs and "size=1g" in tmpfs["/tmp"], tmpfs
    roots = {"engine data root": docker_root(), "worktree": str(env.project)}

    def fill(path: str, size: int) -> tuple[str, dict[str, int]]:
        """fallocate ``size`` bytes at ``path`` as the agent; (output, host bytes lost)."""
        before = {name: free_bytes(root) for name, root in roots.items()}
        done = env.agent(f"id -u; fallocate -l {size} {path} && echo ALLOCATED; "
                         f"df -k --output=size,used,avail {os.path.dirname(path)} | tail -1")
        after = {name: free_bytes(root) for name, root in roots.items()}
        lost = {name: before[name] - after[name] for name in roots}
        out = (done.stdout + done.stderr).strip()
        assert out.splitlines()[0] == "1001", out
        return out, lost

    # /tmp: larger than its tmpfs.
    out, lost = fill("/tmp/big", TMP_SIZE + 100 * MB)
    worst = max(lost.values())
    security_report.attack(
        "21", f"fallocate {(TMP_SIZE + 100 * MB) // MB} MB in /tmp as uid 1001",
        expected="No space left on device; the host's disk does not shrink",
        observed=f"{next((ln for ln in out.splitlines() if 'fallocate' in ln), out)[-60:]}; "
        f"host lost {worst // MB} MB",
        ok="No space left on device" in out and "ALLOCATED" not in out and worst < 50 * MB,
        host_lost_mb=worst / MB,
    )
    # /dev/shm: Docker's own 64 MB tmpfs.
    out, lost = fill("/dev/shm/big", 100 * MB)
    security_report.attack(
        "21", "fallocate 100 MB in /dev/shm as uid 1001",
        expected="No space left on device (Docker's 64 MB shm)",
        observed=f"{next((ln for ln in out.splitlines() if 'fallocate' in ln), out)[-60:]}; "
        f"host lost {max(lost.values()) // MB} MB",
        ok="No space left on device" in out and max(lost.values()) < 50 * MB,
    )
    # Fill /tmp to its size: the memory it takes stays inside the container's limit.
    out, lost = fill("/tmp/full", TMP_SIZE - 8 * MB)
    assert "ALLOCATED" in out and max(lost.values()) < 50 * MB, (out, lost)
    env.agent("rm -f /tmp/full")

    # The unbounded places, measured with a small file.
    # (The agent's home is in the writable layer too; this bare image has none for uid 1001.)
    for path, root in (("/workspace/big", "worktree"), ("/var/tmp/big", "engine data root")):
        out, lost = fill(path, PROBE)
        env.agent(f"rm -f {path}")
        security_report.attack(
            "21", f"fallocate {PROBE // MB} MB in {path} as uid 1001",
            expected="documented limit: no bound on the worktree and the writable layer",
            observed=f"{'allocated' if 'ALLOCATED' in out else out[-80:]}; host "
            f"({root}) lost {lost[root] // MB} MB",
            # The measured fact: the host pays for it (give or take other writers).
            ok="ALLOCATED" in out and lost[root] > PROBE * 0.8,
            host_lost_mb=lost[root] / MB,
        )
    assert Path(env.project, "big").exists() is False

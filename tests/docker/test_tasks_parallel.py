"""Three task environments at once (issue 5), and notifications from a container hook.

Real worktrees, the real devcontainer CLI and engine, the real hook command that the
agent-team Feature wires into Claude Code's settings, and the real host watcher.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from isofeat.layout import env_id_for, project_name

from .reopen import after_failed_open, devcontainer_up, note_unrepeated
from .test_main_job import bake, host_env, need, run_in

pytestmark = pytest.mark.docker


def docker_names(kind: str) -> set[str]:
    cmd = (["docker", "ps", "-a", "--format", "{{.Names}}"] if kind == "ps" else
           ["docker", kind, "ls", "--format", "{{.Name}}"])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def isofeat(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isofeat", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=1800)


def project_resources(client: Any, project: str) -> dict[str, list[Any]]:
    flt = {"label": [f"com.docker.compose.project={project}"]}
    return {
        "containers": client.containers.list(all=True, filters=flt),
        "networks": client.networks.list(filters=flt),
        "volumes": client.volumes.list(filters=flt),
    }


def service_ip(client: Any, project: str, service: str) -> list[str]:
    (container,) = client.containers.list(filters={"label": [
        f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]})
    return [n["IPAddress"] for n in container.attrs["NetworkSettings"]["Networks"].values()]


def test_three_tasks_side_by_side_isolated_removable_and_notifying(
    tmp_path: Path, docker_client: Any, base_image: str, proxy_image: str,
) -> None:
    need("devcontainer")
    env = host_env(tmp_path)
    repo = bake(tmp_path / "repo", env)
    before = {k: docker_names(k) for k in ("ps", "network", "volume")}
    worktrees_before = subprocess.run(["git", "worktree", "list"], cwd=repo, text=True,
                                      capture_output=True, check=True).stdout

    # Two worktrees first, then all three environments come up at once; the third through
    # `isofeat task new --up` itself.
    for name in ("a", "b"):
        assert isofeat("task", "new", name, cwd=repo, env=env).returncode == 0
        (tmp_path / f"cli-tmp-{name}").mkdir()
    # Each open with a TMPDIR of its own, as `task new --up` does and docs/threat-model.md tells
    # a script that opens several at once to do: the devcontainer CLI names its Features staging
    # folder by the millisecond, so two opens in the same one share it and break.
    procs = [
        subprocess.Popen([need("devcontainer"), "up", "--workspace-folder",
                          str(tmp_path / f"repo-{name}")], text=True,
                         env={**env, "TMPDIR": str(tmp_path / f"cli-tmp-{name}")},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    third = isofeat("task", "new", "c", "--up", cwd=repo, env=env)
    assert "==> devcontainer up" in third.stderr  # progress is shown
    projects = {n: project_name(env_id_for(tmp_path / f"repo-{n}")) for n in "abc"}
    opened = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        opened.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for name, result in zip("abc", [*opened, third], strict=True):
        # A known start-time refusal is recorded and reopened once (tests/docker/reopen.py);
        # an answer the self-test showed but did not count is recorded too.
        note_unrepeated(result, where=f"repo-{name}")
        if result.returncode != 0 and after_failed_open(result, project=projects[name],
                                                        where=f"repo-{name}"):  # fmt: skip
            result = devcontainer_up(need("devcontainer"), tmp_path / f"repo-{name}", env,
                                     project=projects[name])
        assert result.returncode == 0, result.stderr[-4000:]

    assert len(set(projects.values())) == 3
    resources = {n: project_resources(docker_client, p) for n, p in projects.items()}
    for kind in ("containers", "networks", "volumes"):
        ids = [r.id for n in "abc" for r in resources[n][kind]]
        assert len(ids) == len(set(ids)), kind  # nothing shared between environments
        assert all(resources[n][kind] for n in "abc" if kind != "volumes")

    listed = json.loads(isofeat("task", "list", "--json", cwd=repo, env=env).stdout)
    assert {t["name"]: t["running"] for t in listed} == {"a": True, "b": True, "c": True}

    # No container of one environment can reach another's (case 12).
    targets = service_ip(docker_client, projects["b"], "dev") + service_ip(
        docker_client, projects["b"], "proxy")
    probe = " ".join(targets)
    reach = run_in(tmp_path / "repo-a", env, f"""
        for ip in {probe}; do
          for port in 8888 22 80; do
            timeout 3 bash -c "</dev/tcp/$ip/$port" 2>/dev/null && echo "reached $ip:$port"
          done
          echo "via-proxy $ip $(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 \\
              http://$ip:8888/)"
        done
        echo done
        """)
    assert "done" in reach.stdout, reach.stderr[-2000:]
    assert "reached" not in reach.stdout, reach.stdout
    for ip in targets:
        assert f"via-proxy {ip} 403" in reach.stdout, reach.stdout

    # A notification through the real hook command of Claude Code's settings (agent-team).
    hook = run_in(tmp_path / "repo-a", env, r"""
        settings=~/.claude/settings.json
        cmd=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]));
print(s["hooks"]["Notification"][0]["hooks"][0]["command"])' "$settings")
        echo "hook: $cmd" >&2
        event='{"hook_event_name":"Notification","session_id":"s1",
                "message":"Claude needs your permission to use Bash"}'
        printf '%s' "$event" | bash -c "$cmd"
        """)
    assert hook.returncode == 0, hook.stderr[-2000:]
    watched = isofeat("notify", "watch", "--once", "--backend", "stdout", "--json",
                      cwd=repo, env=env)
    assert watched.returncode == 0, watched.stderr
    shown = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert len(shown) == 1, watched.stdout
    assert shown[0]["env"] == env_id_for(tmp_path / "repo-a")  # labelled by its folder
    assert "permission" in shown[0]["message"]

    # Removing one leaves the other two running, and removes everything of its own.
    assert isofeat("task", "rm", "b", "--force", cwd=repo, env=env).returncode == 0
    assert not any(project_resources(docker_client, projects["b"]).values())
    for n in "ac":
        assert all(c.status == "running" for c in
                   project_resources(docker_client, projects[n])["containers"])

    for n in "ac":
        assert isofeat("task", "rm", n, "--force", cwd=repo, env=env).returncode == 0
    # Nothing of the three is left (scoped to their projects: other tests may run beside us).
    for project in projects.values():
        assert not any(project_resources(docker_client, project).values()), project
    after = {k: docker_names(k) for k in ("ps", "network", "volume")}
    leftover = {k: {n for n in after[k] - before[k]
                    if any(p in n for p in projects.values())} for k in after}
    assert not any(leftover.values()), leftover
    assert subprocess.run(["git", "worktree", "list"], cwd=repo, text=True,
                          capture_output=True, check=True).stdout == worktrees_before
    notify_root = tmp_path / "state" / "isofeat" / "notify"
    assert not any(notify_root.iterdir()) if notify_root.exists() else True

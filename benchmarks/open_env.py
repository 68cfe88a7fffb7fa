"""2. Opening an environment with the real devcontainer CLI, against raw Docker on the same
services, in the same run.

The demo project (examples/demo-project) gets the template (`isofeat scaffold`, local
Features) and is opened three ways:

* cold: `devcontainer up` on a fresh project. The Features image is built, from Docker's
  layer cache when an earlier run built the same Features (the first build on a machine
  downloads the agents from npm and takes a minute or more). Timed as a whole, with the time
  of the stages the CLI logs (initializeCommand, image build, compose up, postStartCommand).
* images cached, containers removed (`docker compose down` first): `devcontainer up` against
  `docker compose up -d` of the same compose files with the image the CLI built.
  `devcontainer up` also runs `isofeat init` and the `postStartCommand` self-test.
* warm: the environment running, and stopped: `devcontainer up` against `docker start` of
  the containers plus one `docker exec dev true`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO, BenchError, Context, sh


def host_env(ctx: Context) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(ctx.python).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_STATE_HOME"] = str(ctx.scratch / "open-state")
    env["XDG_CONFIG_HOME"] = str(ctx.scratch / "open-config")
    return env


def bake(root: Path, env: dict[str, str], *answers: str) -> Path:
    """The demo project as a git repository with the template applied (like scripts/demo)."""
    shutil.copytree(REPO / "examples" / "demo-project", root)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid"]
    sh([*git, "init", "-q", "-b", "main"], cwd=root)
    sh([sys.executable, "-m", "isofeat", "scaffold", "--no-input", "features_source=local",
        "project_name=bench open", *answers], cwd=root, env=env, timeout=900)
    sh([*git, "add", "-A"], cwd=root)
    sh([*git, "commit", "-qm", "demo"], cwd=root)
    return root


def container(project: str, service: str) -> str:
    ids = sh(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
              "--filter", f"label=com.docker.compose.service={service}"]).split()
    if len(ids) != 1:
        raise BenchError(f"expected one {service} container of {project}, found {ids}")
    return ids[0]


def devcontainer_up(ws: Path, env: dict[str, str], retries: list[str] | None = None,
                    ) -> tuple[float, str]:
    """Time one `devcontainer up`. The self-test reaches real hosts through the proxy; when it
    fails (a flaky uplink), the open is retried once and the failure appended to `retries`."""
    for attempt in (1, 2):
        start = time.perf_counter()
        proc = subprocess.run(["devcontainer", "up", "--workspace-folder", str(ws)],
                              capture_output=True, text=True, env=env, timeout=1800,
                              check=False)
        took = time.perf_counter() - start
        if '"outcome":"success"' in proc.stdout.replace(" ", ""):
            return took, proc.stderr
        failed = [line for line in proc.stderr.splitlines() if "FAIL" in line]
        if retries is None or attempt == 2 or not failed:
            raise BenchError(f"devcontainer up failed: {proc.stdout[-800:]} "
                             f"{proc.stderr[-1500:]}")
        retries.append(" / ".join(failed)[:300])
    raise AssertionError("unreachable")


def stages(log: str, total: float) -> dict[str, float]:
    """Seconds per stage of one `devcontainer up`, from the timestamps of the CLI's log: a
    stage runs from the line that starts it to the line that starts the next one."""
    marks = (("Running the initializeCommand", "initializeCommand (isofeat init)"),
             ("Start: Run: docker compose -f", "compose config"),
             ("Start: Run: docker inspect", "image build (Features)"),
             ("Start: Run: docker build", "image build (Features)"),
             (".yml build", "image build (Features)"),
             (".yml up -d", "compose up (proxy healthy, dev started)"),
             ("Running the postCreateCommand", "postCreateCommand"),
             ("Running the postStartCommand", "postStartCommand (isofeat doctor)"))
    events: list[tuple[float, str]] = []
    first: float | None = None
    for line in log.splitlines():
        if not line.startswith("[20") or "]" not in line:
            continue
        stamp = line[1:line.index("]")]
        try:
            when = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        first = when if first is None else first
        for needle, stage in marks:
            if needle in line and (not events or events[-1][1] != stage):
                events.append((when, stage))
                break
    out: dict[str, float] = {}
    if first is None:
        return out
    end = first + total
    for (when, stage), nxt in zip(events, [*events[1:], (end, "")], strict=True):
        out[stage] = out.get(stage, 0.0) + max(nxt[0] - when, 0.0)
    return out


def run(ctx: Context) -> None:
    m = "open"
    if shutil.which("devcontainer") is None:
        raise BenchError("no devcontainer CLI: scripts/bootstrap installs it")
    from isofeat.layout import env_id_for, project_name
    from isofeat.tasks import remove_environment

    env = host_env(ctx)
    ctx.progress("open: baking the demo project with the template")
    ws = bake(ctx.scratch / "open-demo", env)
    project = project_name(env_id_for(ws))
    dc = ws / ".devcontainer"
    try:
        ctx.progress("open: cold devcontainer up (Features image from the layer cache)")
        cold, log = devcontainer_up(ws, env)
        parts = stages(log, cold)
        ctx.add(m, "devcontainer up, cold (Features image built; + self-test)", "s",
                [cold], note=json.dumps({k: round(v, 2) for k, v in parts.items()}))
        for stage, seconds in parts.items():
            ctx.add(m, f"cold stage: {stage}", "s", [seconds])
        image = sh(["docker", "inspect", "-f", "{{.Config.Image}}", container(project, "dev")])
        override = ctx.scratch / "open-override.yaml"
        override.write_text(f"services:\n  dev:\n    image: {image.strip()}\n")
        compose = ["docker", "compose", "-p", project, "--project-directory", str(dc),
                   "-f", str(dc / "compose.yaml"), "-f", str(override)]
        down = [*compose, "down", "-t", "1"]
        cached_dc, cached_raw, warm_dc, warm_raw, stopped_dc, stopped_raw = ([] for _ in range(6))
        retries: list[str] = []
        for run_no in range(ctx.runs):
            ctx.progress(f"open: images cached, containers removed, run {run_no + 1}/{ctx.runs}")
            sh(down, env=env)
            start = time.perf_counter()
            sh([*compose, "up", "-d", "--wait"], env=env)
            cached_raw.append(time.perf_counter() - start)
            sh(down, env=env)
            cached_dc.append(devcontainer_up(ws, env, retries)[0])
            ctx.progress(f"open: warm, run {run_no + 1}/{ctx.runs}")
            warm_dc.append(devcontainer_up(ws, env, retries)[0])
            dev, proxy = container(project, "dev"), container(project, "proxy")
            start = time.perf_counter()
            sh(["docker", "start", dev])
            sh(["docker", "exec", dev, "true"])
            warm_raw.append(time.perf_counter() - start)
            sh([*compose, "stop", "-t", "1"], env=env)
            stopped_dc.append(devcontainer_up(ws, env, retries)[0])
            sh([*compose, "stop", "-t", "1"], env=env)
            start = time.perf_counter()
            sh(["docker", "start", proxy, dev])
            sh(["docker", "exec", dev, "true"])
            stopped_raw.append(time.perf_counter() - start)
        ctx.add(m, "opens retried after a failed self-test", "count", [float(len(retries))],
                note="; ".join(retries)[:1000] or None)
        base = "docker compose up -d --wait (images cached, containers removed)"
        ctx.add(m, base, "s", cached_raw)
        ctx.add(m, "devcontainer up, images cached, containers removed (+ init, self-test)",
                "s", cached_dc, baseline=base, target="<= 2x")
        base = "docker start + docker exec (running)"
        ctx.add(m, base, "s", warm_raw)
        ctx.add(m, "devcontainer up, warm (running)", "s", warm_dc, baseline=base,
                target="<= 1.5x")
        base = "docker start proxy dev + docker exec (stopped)"
        ctx.add(m, base, "s", stopped_raw)
        ctx.add(m, "devcontainer up, warm (stopped; + self-test)", "s", stopped_dc,
                baseline=base, target="<= 1.5x")
    finally:
        remove_environment(project, lambda _m: None)

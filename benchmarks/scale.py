"""4. Scale: idle memory per service, and 1, 2, 4, 8 environments opened at once.

* Idle memory: `docker stats` of each container of one open environment after it settled
  (sandbox `dev`, `proxy`, and with Docker-in-Docker the `docker` engine and its proxy),
  against a bare `sleep infinity` container of the same base image.
* Parallel: N copies of the demo project (each its own environment: the id comes from the
  path) opened with N concurrent `devcontainer up`, images cached. The figures are the wall
  time until all N are up, against one environment opened alone in the same run, and their
  memory in total, against N times one environment's.

Every environment is removed afterwards; the figures of a busy machine vary (see the JSON's
load averages).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from benchmarks.harness import BenchError, Context, sh
from benchmarks.open_env import bake, devcontainer_up, host_env

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 10**6,
         "GB": 10**9}


def parse_mem(text: str) -> float:
    """'12.5MiB / 3.8GiB' -> bytes used."""
    used = text.split("/")[0].strip()
    for unit in sorted(UNITS, key=len, reverse=True):
        if used.endswith(unit):
            return float(used[: -len(unit)]) * UNITS[unit]
    return float(used)


def memory_by_service(project: str) -> dict[str, float]:
    out: dict[str, float] = {}
    ids = sh(["docker", "ps", "-q", "--filter",
              f"label=com.docker.compose.project={project}"]).split()
    if not ids:
        return out
    lines = sh(["docker", "stats", "--no-stream", "--format",
                "{{.ID}} {{.MemUsage}}", *ids]).splitlines()
    for line in lines:
        cid, usage = line.split(" ", 1)
        service = sh(["docker", "inspect", "-f",
                      '{{index .Config.Labels "com.docker.compose.service"}}', cid]).strip()
        out[service] = out.get(service, 0.0) + parse_mem(usage)
    return out


def open_many(workspaces: list[Path], env: dict[str, str]) -> tuple[float, list[str]]:
    """Wall time of N concurrent `devcontainer up`, and the errors of those that failed."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["devcontainer", "up", "--workspace-folder", str(ws)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              text=True) for ws in workspaces]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    took = time.perf_counter() - start
    failed = [f"{ws.name}: {out.strip()[-300:]}" for ws, out in zip(workspaces, outs, strict=True)
              if '"outcome":"success"' not in out.replace(" ", "")]
    return took, failed


def run(ctx: Context) -> None:
    m = "scale"
    if shutil.which("devcontainer") is None:
        raise BenchError("no devcontainer CLI: scripts/bootstrap installs it")
    from isofeat.layout import env_id_for, project_name
    from isofeat.tasks import remove_environment

    env = host_env(ctx)
    projects: list[str] = []
    try:
        ctx.progress("scale: bare sleep container for the memory baseline")
        bare = f"isofeat-bench-{ctx.run_id}-bare"
        sh(["docker", "run", "-d", *ctx.labels(), "--name", bare, "isofeat/base:bookworm",
            "sleep", "infinity"])
        time.sleep(2)
        base_mem = parse_mem(sh(["docker", "stats", "--no-stream", "--format",
                                 "{{.MemUsage}}", bare]))
        base = "bare container (sleep infinity, isofeat/base)"
        ctx.add(m, base, "MiB", [base_mem / 2**20])

        ctx.progress("scale: baking the demo project")
        template = bake(ctx.scratch / "scale-demo", env)
        counts = (1, 2) if ctx.smoke else (1, 2, 4, 8)
        one_time = 0.0
        one_mem = 0.0
        for n in counts:
            copies = []
            for i in range(n):
                ws = ctx.scratch / f"scale-{n}-{i}"
                shutil.copytree(template, ws, symlinks=True)
                copies.append(ws)
                projects.append(project_name(env_id_for(ws)))
            # Images cached, as in measurement 2: each copy is opened once alone (its Features
            # image built from the layer cache, one at a time: without BuildKit concurrent
            # builds share one staging image) and its containers removed.
            ctx.progress(f"scale: building {n} image(s) one at a time")
            for ws in copies:
                devcontainer_up(ws, env)
                remove_environment(project_name(env_id_for(ws)), lambda _m: None)
            ctx.progress(f"scale: {n} environment(s) at once")
            took, failed = open_many(copies, env)
            if len(failed) == n:
                raise BenchError(f"every devcontainer up of {n} failed: {failed[0]}")
            if failed:
                ctx.progress(f"scale: {len(failed)} of {n} failed: {failed}")
            ctx.add(m, f"failed opens of {n} at once", "count", [float(len(failed))],
                    note="; ".join(failed)[:1000] or None)
            time.sleep(3)
            mems = [memory_by_service(project_name(env_id_for(ws))) for ws in copies]
            total = sum(sum(x.values()) for x in mems)
            if n == 1:
                one_time, one_mem = took, total
                for service, used in sorted(mems[0].items()):
                    ctx.add(m, f"idle memory, one environment: {service}", "MiB",
                            [used / 2**20], baseline=base)
                ctx.add(m, "open 1 environment (devcontainer up, images cached)", "s", [took])
                ctx.add(m, "memory of 1 environment", "MiB", [total / 2**20])
            else:
                ctx.add(m, f"open {n} environments at once (wall time)", "s", [took],
                        baseline="open 1 environment (devcontainer up, images cached)",
                        note=f"{n}x one would be {n * one_time:.1f} s")
                ctx.add(m, f"memory of {n} environments", "MiB", [total / 2**20],
                        baseline="memory of 1 environment",
                        note=f"{n}x one would be {n * one_mem / 2**20:.0f} MiB")
            for ws in copies:
                remove_environment(project_name(env_id_for(ws)), lambda _m: None)
        if not ctx.smoke:
            ctx.progress("scale: one environment with Docker-in-Docker, idle memory")
            ws = bake(ctx.scratch / "scale-dind", env, "docker_in_docker=yes")
            projects.append(project_name(env_id_for(ws)))
            devcontainer_up(ws, env)
            time.sleep(5)
            for service, used in sorted(memory_by_service(project_name(env_id_for(ws))).items()):
                ctx.add(m, f"idle memory, with DinD: {service}", "MiB", [used / 2**20],
                        baseline=base)
    finally:
        for project in projects:
            remove_environment(project, lambda _m: None)

"""1. `isofeat init`, the initializeCommand, against starting the same interpreter at all.

Every open of an environment runs devcontainer.json's `initializeCommand` on the host, through
`/bin/sh -c`. The figure is that whole string, read from the template, against
`python -c pass` of the interpreter isofeat runs on, in the same run. Byte-code is compiled
first and PYTHONDONTWRITEBYTECODE is dropped, as in a normal install.

Also: the first open of a project of 1k, 10k and 100k files (a fresh state folder: the agent's
own git and the walk that gives the worktree to the sandbox group), against one `find` walk
over the same tree, and the `-X importtime` profile of a warm `isofeat init`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.harness import REPO, Context, sh

TEMPLATE_JSON = next((REPO / "templates" / "isofeat").glob("*/devcontainer.json"))


def initialize_command() -> str:
    """The template's initializeCommand, exactly as devcontainer.json has it."""
    match = re.search(r'"initializeCommand":\s*("(?:[^"\\]|\\.)*")', TEMPLATE_JSON.read_text())
    if match is None:
        raise ValueError(f"no initializeCommand in {TEMPLATE_JSON}")
    value = json.loads(match.group(1))
    assert isinstance(value, str)
    return value


def samples(argv: list[str], runs: int, env: dict[str, str], cwd: Path) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def import_profile(python: str, isofeat: str, env: dict[str, str],
                   cwd: Path) -> tuple[float, list[tuple[str, float]]]:
    """Total import time of a warm `isofeat init` and its slowest top-level imports
    (cumulative seconds), from -X importtime."""
    proc = subprocess.run([python, "-X", "importtime", isofeat, "init", "-q"], env=env,
                          cwd=cwd, capture_output=True, text=True, check=True)
    top: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2]
        if len(name) - len(name.lstrip()) == 1:  # imported by no other module: top level
            top.append((name.strip(), int(parts[1]) / 1e6))
    return sum(t for _, t in top), sorted(top, key=lambda item: -item[1])[:8]


def run(ctx: Context) -> None:
    m = "init"
    runs = max(ctx.runs * 6, 3) if not ctx.smoke else 3  # start-up is noisy; cheap to repeat
    python, isofeat = ctx.python, ctx.isofeat
    root = ctx.scratch / "init"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(XDG_STATE_HOME=str(root / "state"), XDG_CONFIG_HOME=str(root / "config"),
               PATH=f"{Path(isofeat).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    sh([python, "-m", "compileall", "-q", str(REPO / "src"), str(Path(isofeat).parent.parent)],
       env=env, check=False)
    ws = root / "project"
    (ws / ".devcontainer").mkdir(parents=True)
    (ws / ".devcontainer" / "whitelist.txt").write_text("extra.example.org\n")
    sh(["git", "init", "-q", str(ws)])
    sh([isofeat, "init", "-q"], cwd=ws, env=env)  # the state a warm open finds
    command = initialize_command()
    ctx.progress(f"init: {runs} runs of each command")

    base = "python -c pass (same interpreter)"
    cases: list[tuple[str, list[str], str | None]] = [
        (base, [python, "-c", "pass"], None),
        # Plain `isofeat init` takes the quick path (quickinit.py) when nothing changed...
        ("sh -c initializeCommand, warm (nothing changed)", ["sh", "-c", command], "<= 1.5x"),
        # ... any option (here -q) runs it in full: what a warm open cost before.
        ("isofeat init -q, warm (full run)", [isofeat, "init", "-q"], None),
        ("isofeat init, cold (both proxy configs rendered)",
         ["sh", "-c", f'rm -f "{root}"/state/isofeat/envs/*/*/.render-key; '
                      f'exec "{isofeat}" init -q'], None),
        ("isofeat --version", [isofeat, "--version"], None),
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(runs):  # interleaved, so drifting load falls on every case alike
        for name, argv, _ in cases:
            results[name] += samples(argv, 1, env, ws)
    for name, _, target in cases:
        ctx.add(m, name, "s", results[name], baseline=None if name == base else base,
                target=target)
    total, slowest = import_profile(python, isofeat, env, ws)
    ctx.add(m, "all imports of a warm isofeat init -q, full run (-X importtime)", "s", [total],
            baseline=base, note="slowest top-level imports: " + ", ".join(
                f"{name} {seconds * 1000:.1f} ms" for name, seconds in slowest))

    # First open against repository size.
    from benchmarks.bench_task import make_repo

    for files in (1_000,) if ctx.smoke else (1_000, 10_000, 100_000):
        ctx.progress(f"init: first open of a {files}-file repository")
        repo_root = ctx.scratch / f"repo{files}"
        repo = make_repo(repo_root, files, 0)
        walk, first = [], []
        for _ in range(max(1, min(ctx.runs, 3))):
            shutil.rmtree(root / "state", ignore_errors=True)
            # A first open again: the walk is skipped once the worktree's root has the
            # sandbox group, so every path goes back to the user's group first (not timed).
            sh(["chgrp", "-R", str(os.getgid()), str(repo)])
            sh(["chmod", "g-s", str(repo)])
            start = time.perf_counter()
            subprocess.run(["find", str(repo), "-xdev"], check=True, stdout=subprocess.DEVNULL)
            walk.append(time.perf_counter() - start)
            first += samples([isofeat, "init", "-q", str(repo)], 1, env, repo)
        wname = f"find over {files} files (one walk)"
        ctx.add(m, wname, "s", walk)
        ctx.add(m, f"first isofeat init, {files} files", "s", first, baseline=wname,
                note=f"median {statistics.median(first):.2f} s")
        shutil.rmtree(repo_root, ignore_errors=True)

"""What a task costs to make: `isofeat task new` plus the first `isofeat init`, against a bare
`git worktree add`, on the same generated repository in the same run.

    .venv/bin/python benchmarks/bench_task.py [--files 100000] [--history-mb 1024] [--runs 3]

The repository has FILES small files in nested folders and about HISTORY_MB of history (one
commit per 64 MiB of incompressible data, each replaced by the next, so the worktree stays
small and the history does not). It prints the median and spread of each step and its ratio to
`git worktree add`. `isofeat init` also gives the worktree to the sandbox group on a first open
(one walk over every file); that walk is timed on its own (`--no-share` against the default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def git(*args: str, cwd: Path) -> None:
    # gc.auto=0: a commit of many files would start `git gc --auto` in the background, which
    # removes folders under a timed walk and competes for the CPU.
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", "-c", "gc.auto=0",
                    *args],
                   cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_repo(root: Path, files: int, history_mb: int) -> Path:
    repo = root / "repo"
    (repo / ".devcontainer").mkdir(parents=True)
    (repo / ".devcontainer" / "isofeat.json").write_text("{}\n")
    (repo / ".devcontainer" / ".gitignore").write_text(".env\n")
    git("init", "-q", "-b", "main", cwd=repo)
    for i in range(files):
        folder = repo / "src" / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
            print(f"\r  files {i:>7}/{files}", end="", file=sys.stderr, flush=True)
        (folder / f"f{i:06d}.txt").write_text(f"file {i}\n")
    print(file=sys.stderr)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "files", cwd=repo)
    chunk = 64
    for n in range(max(history_mb // chunk, 0)):
        print(f"\r  history {n * chunk:>5}/{history_mb} MB", end="", file=sys.stderr, flush=True)
        with open(repo / "blob.bin", "wb") as fh:
            fh.write(os.urandom(chunk << 20))
        git("add", "blob.bin", cwd=repo)
        git("commit", "-qm", f"history {n}", cwd=repo)
    print(file=sys.stderr)
    git("rm", "-q", "--cached", "--ignore-unmatch", "blob.bin", cwd=repo)
    (repo / "blob.bin").unlink(missing_ok=True)
    git("commit", "-qm", "drop the blob", "--allow-empty", cwd=repo)
    return repo


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--history-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    isofeat = shutil.which("isofeat", path=str(Path(sys.executable).parent)) or "isofeat"
    root = Path(tempfile.mkdtemp(prefix="isofeat-bench-task-"))
    env = {**os.environ, "XDG_STATE_HOME": str(root / "state"),
           "XDG_CONFIG_HOME": str(root / "config")}
    try:
        print(f"==> generating {args.files} files, {args.history_mb} MB of history",
              file=sys.stderr)
        repo = make_repo(root, args.files, args.history_mb)
        size = sum(p.stat().st_size for p in (repo / ".git").rglob("*") if p.is_file())
        rows: dict[str, list[float]] = {k: [] for k in (
            "git worktree add (baseline)", "isofeat task new",
            "isofeat init --no-share (first open: the agent's git)",
            "isofeat init (first open, with the group walk)")}
        for run in range(args.runs):
            print(f"==> run {run + 1}/{args.runs}", file=sys.stderr)
            wt = root / f"plain-{run}"
            rows["git worktree add (baseline)"].append(
                timed(["git", "worktree", "add", "-q", "-b", f"plain/{run}", str(wt)], repo, env))
            name = f"t{run}"
            rows["isofeat task new"].append(timed([isofeat, "task", "new", name], repo, env))
            task = root / f"repo-{name}"
            rows["isofeat init --no-share (first open: the agent's git)"].append(
                timed([isofeat, "init", "-q", "--no-share", str(task)], repo, env))
            shutil.rmtree(root / "state")
            rows["isofeat init (first open, with the group walk)"].append(
                timed([isofeat, "init", "-q", str(task)], repo, env))
        base = statistics.median(rows["git worktree add (baseline)"])
        print(f"\nrepository: {args.files} files, .git {size / 2**20:.0f} MiB; "
              f"{args.runs} runs; median (min-max), ratio to git worktree add\n")
        print("| step | median | spread | ratio |\n|---|---:|---:|---:|")
        for label, values in rows.items():
            med = statistics.median(values)
            print(f"| {label} | {med:.2f} s | {min(values):.2f}-{max(values):.2f} s | "
                  f"{med / base:.2f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

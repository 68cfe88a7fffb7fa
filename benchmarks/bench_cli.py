"""Start-up cost of the host-side CLI, as ratios to a bare interpreter measured in the same run.

`isofeat init` runs on every container open, so its cost should stay close to starting
Python at all. Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/bench_cli.py [--runs 30]

It prints the median wall time of each command and its ratio to `python -c pass`.
Byte-code is compiled first and PYTHONDONTWRITEBYTECODE is dropped, as in a normal install.
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
from collections.abc import Sequence
from pathlib import Path


def median_seconds(argv: Sequence[str], runs: int, env: dict[str, str], cwd: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    python = sys.executable
    isofeat = shutil.which("isofeat", path=str(Path(python).parent)) or "isofeat"
    root = Path(tempfile.mkdtemp(prefix="isofeat-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(XDG_STATE_HOME=str(root / "state"), XDG_CONFIG_HOME=str(root / "config"))
    subprocess.run([python, "-m", "compileall", "-q", str(Path(__file__).parents[1] / "src")],
                   env=env, check=False, stdout=subprocess.DEVNULL)
    ws = root / "project"
    (ws / ".devcontainer").mkdir(parents=True)
    (ws / ".devcontainer" / "whitelist.txt").write_text("extra.example.org\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run([isofeat, "init", "-q"], cwd=ws, env=env, check=True)  # warm the state

    def cold_init() -> list[str]:
        # Forces a full render: the render stamps are removed before each run.
        return ["sh", "-c", f'rm -f "{root}"/state/isofeat/envs/*/*/.render-key; '
                f'exec "{isofeat}" init -q']

    cases: list[tuple[str, list[str]]] = [
        ("python -c pass (baseline)", [python, "-c", "pass"]),
        ("python -c 'import argparse, json, pathlib'", [python, "-c",
                                                         "import argparse, json, pathlib"]),
        ("isofeat --version", [isofeat, "--version"]),
        ("isofeat init (warm: nothing changed)", [isofeat, "init", "-q"]),
        ("isofeat init (cold: renders both proxies)", cold_init()),
        ("isofeat whitelist check github.com", [isofeat, "whitelist", "check", "github.com",
                                                "--no-global"]),
    ]
    results = [(name, median_seconds(argv, args.runs, env, ws)) for name, argv in cases]
    base = results[0][1]
    print(f"median of {args.runs} runs each; ratio to the baseline measured in this run")
    print(f"{'command':<46} {'median':>9} {'ratio':>7}")
    for name, seconds in results:
        print(f"{name:<46} {seconds * 1000:>7.1f}ms {seconds / base:>6.2f}x")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

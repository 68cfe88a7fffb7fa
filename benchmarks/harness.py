"""The benchmark harness: runs the measurements, prints one table, writes JSON and a chart.

    python -m benchmarks [--smoke] [--only NAME ...] [--runs N] [--out DIR] [--json PATH]

Every figure is a ratio to a baseline measured in the same run on the same machine. Each row
gives the median of the runs and their spread (min-max). Progress goes to stderr, the table to
stdout; the JSON (and, with matplotlib installed, a PNG chart) go to build/bench/ by default.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Every container, network and volume a measurement starts carries this label, so that a
# crashed run can be cleaned up by it: docker rm -f $(docker ps -aq --filter label=isofeat-bench)
LABEL = "isofeat-bench"


class BenchError(Exception):
    """A measurement cannot run here; the message says why and what to do."""


@dataclass
class Row:
    """One line of the table: a measured quantity, its runs, and its ratio to a baseline."""

    measurement: str
    name: str
    unit: str
    values: list[float]
    baseline: str | None = None  # name of the row (same measurement) this one is a ratio to
    higher_is_better: bool = False
    target: str | None = None  # the target, as text ("<= 1.5x")
    note: str | None = None
    median: float = 0.0
    low: float = 0.0
    high: float = 0.0
    ratio: float | None = None
    meets_target: bool | None = None

    def finish(self) -> None:
        self.median = statistics.median(self.values) if self.values else float("nan")
        self.low = min(self.values) if self.values else float("nan")
        self.high = max(self.values) if self.values else float("nan")


@dataclass
class Context:
    """What a measurement gets: how many runs, the smoke switch, a scratch folder, and tools."""

    runs: int
    smoke: bool
    scratch: Path
    run_id: str
    python: str = sys.executable
    rows: list[Row] = field(default_factory=list)

    @property
    def isofeat(self) -> str:
        return shutil.which("isofeat", path=str(Path(self.python).parent)) or "isofeat"

    def progress(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {message}", file=sys.stderr, flush=True)

    def add(self, measurement: str, name: str, unit: str, values: Sequence[float],
            **kwargs: Any) -> Row:
        row = Row(measurement, name, unit, list(values), **kwargs)
        self.rows.append(row)
        return row

    def labels(self) -> list[str]:
        return ["--label", LABEL, "--label", f"{LABEL}.run={self.run_id}"]


def sh(argv: Sequence[str], *, check: bool = True, timeout: float | None = 600,
       env: dict[str, str] | None = None, cwd: Path | None = None,
       input: str | None = None) -> str:
    """Run a command and return its stdout; on failure, raise with its stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd, input=input)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])}... exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-800:]}")
    return proc.stdout


def timed(argv: Sequence[str], **kwargs: Any) -> float:
    start = time.perf_counter()
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if proc.returncode == 0 else f"docker info failed: {proc.stderr.strip()}"


def cleanup_docker(run_id: str) -> None:
    """Remove every container, network and volume this run labelled."""
    flt = f"label={LABEL}.run={run_id}"
    ids = sh(["docker", "ps", "-aq", "--filter", flt], check=False).split()
    if ids:
        sh(["docker", "rm", "-fv", *ids], check=False)
    nets = sh(["docker", "network", "ls", "-q", "--filter", flt], check=False).split()
    if nets:
        sh(["docker", "network", "rm", *nets], check=False)
    vols = sh(["docker", "volume", "ls", "-q", "--filter", flt], check=False).split()
    if vols:
        sh(["docker", "volume", "rm", *vols], check=False)


@dataclass(frozen=True)
class Measurement:
    name: str
    title: str
    run: Callable[[Context], None]
    needs_docker: bool


def registry() -> list[Measurement]:
    # Imported here so that `--help` stays fast and a broken module names itself.
    from benchmarks import (
        bench_notify,
        image_size,
        init_cost,
        open_env,
        proxy_cost,
        scale,
    )

    return [
        Measurement("init", "1. isofeat init (initializeCommand) start-up", init_cost.run, False),
        Measurement("open", "2. opening an environment (devcontainer CLI vs compose)",
                    open_env.run, True),
        Measurement("proxy", "3. what the egress proxy costs", proxy_cost.run, True),
        Measurement("scale", "4. memory and parallel environments", scale.run, True),
        Measurement("notify", "5. notification latency, container to host",
                    bench_notify.run, True),
        Measurement("images", "6. image sizes", image_size.run, True),
    ]


def compute_ratios(rows: list[Row]) -> None:
    for row in rows:
        row.finish()
    by_name = {(r.measurement, r.name): r for r in rows}
    for row in rows:
        if row.baseline is None:
            continue
        base = by_name.get((row.measurement, row.baseline))
        if base is not None and base.median:
            row.ratio = row.median / base.median


def fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit in ("MB/s", "MiB"):
        return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def table(rows: list[Row]) -> str:
    lines = ["| measurement | what | median | spread (min-max) | runs | ratio | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = "baseline" if r.baseline is None and any(
            o.baseline == r.name and o.measurement == r.measurement for o in rows) else (
            f"{r.ratio:.2f}x" if r.ratio is not None else "")
        spread = f"{fmt(r.low, r.unit)}-{fmt(r.high, r.unit)}" if len(r.values) > 1 else ""
        lines.append(f"| {r.measurement} | {r.name} | {fmt(r.median, r.unit)} | {spread} | "
                     f"{len(r.values)} | {ratio} | {r.target or ''} |")
    return "\n".join(lines)


def write_chart(rows: list[Row], path: Path) -> str | None:
    """Ratios as horizontal bars, one panel per measurement. None, or why no chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no PNG"
    with_ratio = [r for r in rows if r.ratio is not None]
    if not with_ratio:
        return "no ratios to chart"
    groups: dict[str, list[Row]] = {}
    for r in with_ratio:
        groups.setdefault(r.measurement, []).append(r)
    heights = [max(1.2, 0.38 * len(g) + 0.8) for g in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(13, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (name, group) in zip(axes[:, 0], groups.items(), strict=True):
        labels = [r.name if len(r.name) <= 72 else r.name[:70] + "..." for r in group]
        values = [r.ratio or 0.0 for r in group]
        colors = ["tab:green" if r.meets_target else
                  "tab:red" if r.meets_target is False else "tab:blue" for r in group]
        ax.barh(range(len(group)), values, color=colors)
        ax.set_yticks(range(len(group)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        bases = sorted({str(r.baseline) for r in group})
        ax.set_title(f"{name}: ratio to " + "; ".join(bases)[:120], fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        if max(values) / max(min(v for v in values if v > 0), 1e-9) > 50:
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    fig.suptitle("ratio to the baseline measured in the same run "
                 "(green: meets the issue's target, red: misses it)", fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.98))
    fig.subplots_adjust(left=0.36)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count()}


def loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


@contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="isofeat-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    measurements = registry()
    names = [m.name for m in measurements]
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="one run of each measurement, small sizes (what CI runs)")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"run only this measurement (repeatable): {', '.join(names)}")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per figure (default 5; 1 with --smoke)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench",
                        help="folder for bench.json and bench.png (default build/bench)")
    parser.add_argument("--json", type=Path, default=None,
                        help="JSON path (default OUT/bench.json)")
    parser.add_argument("--png", type=Path, default=None, help="PNG path (default OUT/bench.png)")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.smoke else 5)
    selected = [m for m in measurements if not args.only or m.name in args.only]
    json_path = args.json or args.out / "bench.json"
    png_path = args.png or args.out / "bench.png"
    run_id = f"{os.getpid()}-{int(time.time())}"
    no_docker = docker_available() if any(m.needs_docker for m in selected) else None

    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    started = _dt.datetime.now(_dt.timezone.utc)
    load_start = loadavg()
    with scratch_dir() as scratch:
        ctx = Context(runs=runs, smoke=args.smoke, scratch=scratch, run_id=run_id)
        for m in selected:
            if m.needs_docker and no_docker:
                errors[m.name] = f"skipped: {no_docker}"
                ctx.progress(f"{m.name}: skipped ({no_docker})")
                continue
            ctx.progress(f"== {m.title} ({runs} run{'s' if runs > 1 else ''})")
            t0 = time.perf_counter()
            try:
                m.run(ctx)
            except (BenchError, subprocess.SubprocessError, OSError) as exc:
                errors[m.name] = str(exc)
                ctx.progress(f"{m.name}: FAILED: {exc}")
            finally:
                if m.needs_docker:
                    cleanup_docker(run_id)
                durations[m.name] = time.perf_counter() - t0
            ctx.progress(f"{m.name}: done in {durations[m.name]:.1f}s")
        rows = ctx.rows
    compute_ratios(rows)
    for r in rows:
        if r.target and r.ratio is not None:
            r.meets_target = _meets(r.target, r.ratio)

    info = {**machine(), "loadavg_start": load_start, "loadavg_end": loadavg()}
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {
        "command": command.strip(), "started": started.isoformat(timespec="seconds"),
        "smoke": args.smoke, "runs": runs, "machine": info,
        "measurements": {m.name: m.title for m in selected},
        "durations_s": durations, "errors": errors,
        "rows": [asdict(r) for r in rows],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(rows))
    why_not = write_chart(rows, png_path)
    print(f"\nJSON: {json_path}" + (f"\nPNG: {png_path}" if why_not is None else
                                    f"\nPNG: none ({why_not})"), file=sys.stderr)
    for name, error in errors.items():
        print(f"{name}: {error}", file=sys.stderr)
    return 1 if errors else 0


def _meets(target: str, ratio: float) -> bool | None:
    """Targets are written '<= 1.5x' or '>= 0.8x'."""
    parts = target.replace("x", "").split()
    if len(parts) != 2:
        return None
    op, limit = parts[0], float(parts[1])
    return ratio <= limit if op == "<=" else ratio >= limit if op == ">=" else None

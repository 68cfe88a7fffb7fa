"""The benchmark harness's smoke mode, so that it cannot rot: one run of every measurement at
small sizes, from a clean state, through the real entry point (`python -m benchmarks`).

It asserts that the JSON holds every measurement with sane values, never timing thresholds:
speed is measured (docs/performance.md), not asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
MEASUREMENTS = {"init", "open", "proxy", "scale", "notify", "images"}


def rows_of(doc: dict, measurement: str) -> list[dict]:
    return [r for r in doc["rows"] if r["measurement"] == measurement]


def test_bench_smoke_writes_every_measurement(
    tmp_path: Path, base_image: str, proxy_image: str
) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "ISOFEAT_BENCH_PROXY_IMAGE": proxy_image}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out),
         "--png", str(tmp_path / "bench.png")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["runs"] == 1
    assert doc["errors"] == {}
    assert set(doc["measurements"]) == MEASUREMENTS
    for name in MEASUREMENTS:
        assert rows_of(doc, name), f"no rows for {name}"
    by_name = {(r["measurement"], r["name"]): r for r in doc["rows"]}
    for row in doc["rows"]:
        assert row["values"], row
        assert all(math.isfinite(v) for v in row["values"]), row
        if row["baseline"] is not None:
            assert (row["measurement"], row["baseline"]) in by_name, row
            assert row["ratio"] is not None and row["ratio"] > 0, row
        if not row["name"].startswith("added"):  # an added latency may be below zero
            assert row["median"] >= 0, row
    # Progress went to stderr, the table to stdout.
    assert "| measurement |" in result.stdout
    assert "proxy:" in result.stderr

    proxy = rows_of(doc, "proxy")
    rates = [r for r in proxy if r["unit"] == "MB/s"]
    assert len(rates) >= 4 and all(r["median"] > 1 for r in rates)  # HTTP+HTTPS, direct+proxy
    assert any(r["target"] == ">= 0.8x" for r in rates)
    latency = [r for r in proxy if r["unit"] == "s" and not r["name"].startswith("added")]
    assert latency and all(0 < r["median"] < 5 for r in latency)

    init = rows_of(doc, "init")
    assert any("initializeCommand" in r["name"] and r["ratio"] for r in init)
    assert all(r["median"] < 60 for r in init)

    seen = by_name[("notify", "notifications seen / sent (container)")]
    assert seen["median"] == 1.0
    assert all(0 < r["median"] < 30 for r in rows_of(doc, "notify") if r["unit"] == "s")

    sizes = {r["name"]: r["median"] for r in rows_of(doc, "images")}
    assert any(name.startswith("isofeat/proxy") and 10 < mib < 2000 for name, mib in
               sizes.items())

    opened = {r["name"] for r in rows_of(doc, "open")}
    assert any(n.startswith("devcontainer up, warm") for n in opened)
    assert any(n.startswith("devcontainer up, images cached") for n in opened)
    scale = {r["name"] for r in rows_of(doc, "scale")}
    assert any(n.startswith("idle memory, one environment: proxy") for n in scale)
    assert any(n.startswith("open 2 environments") for n in scale)

"""Not written yet."""

from __future__ import annotations

from benchmarks.harness import BenchError, Context


def run(ctx: Context) -> None:
    raise BenchError("not measured yet")

"""isofeat benchmarks: `python -m benchmarks --help` (see docs/performance.md)."""

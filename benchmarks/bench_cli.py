"""Start-up cost of the host CLI: measurement `init` of the harness, kept as a shortcut.

    .venv/bin/python benchmarks/bench_cli.py [--runs N]
    # is: .venv/bin/python -m benchmarks --only init [--runs N]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.harness import main

    raise SystemExit(main(["--only", "init", *sys.argv[1:]]))

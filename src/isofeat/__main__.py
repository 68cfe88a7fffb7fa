from __future__ import annotations

from isofeat.cli import main

raise SystemExit(main())

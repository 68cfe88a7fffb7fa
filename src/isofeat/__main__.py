from __future__ import annotations

from isofeat.launch import main

raise SystemExit(main())

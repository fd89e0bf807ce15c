"""``python -m include.demo``: seed the demo systems (see :func:`include.demo.seed.main`)."""

from __future__ import annotations

from include.demo.seed import main

raise SystemExit(main())

"""Allows ``python -m drivecap``."""

from drivecap.cli import main

raise SystemExit(main())

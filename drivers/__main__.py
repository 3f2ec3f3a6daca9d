"""``python -m wslifecycle.drivers``: the command-line server (the same as
the ``wslifecycle`` console script). It lives with the drivers, not in the
core: nothing under core/ may reach a driver (docs/theory.md)."""

from wslifecycle.drivers.cli import main

raise SystemExit(main())

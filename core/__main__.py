"""``python -m wslifecycle``: the command-line server.

The one file under core/ that reaches a driver: it is the program's entry
point, which nothing in the library imports (the purity test names it as the
only exception).
"""

from wslifecycle.drivers.cli import main

raise SystemExit(main())

"""`python -m daemon`: the daemon's own entry (see daemon/cli.py)."""

import sys

from daemon.cli import main

sys.exit(main())

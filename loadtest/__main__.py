"""``python -m loadtest`` runs the same command as ``python -m loadtest.cli``."""

import sys

from loadtest.cli import main

sys.exit(main())

"""``python -m fusionserve.loadtest`` runs the same command as ``fusionserve loadtest``."""

import sys

from fusionserve.loadtest.cli import main

sys.exit(main())

"""`python -m proxy` runs the `agentsync-proxy` command."""

import sys

from proxy.cli import main

sys.exit(main())

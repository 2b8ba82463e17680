"""`python -m edgebox` runs the command line."""

import sys

from edgebox.cli import main

sys.exit(main())

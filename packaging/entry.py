"""Entry point of the frozen binary: the same `edgebox.cli:main` as the installed `edgebox` command."""

import sys

from edgebox.cli import main

sys.exit(main())

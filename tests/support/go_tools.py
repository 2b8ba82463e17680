"""The Go tools the tests run (grpcurl, h2spec): built by scripts/setup-go.sh into clients/go/.bin."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GO_BIN = Path(__file__).resolve().parents[2] / "clients" / "go" / ".bin"


def find_go_tool(name: str) -> str | None:
    """The tool's path in clients/go/.bin, else on PATH, else None."""
    local = GO_BIN / name
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)

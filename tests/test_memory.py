"""edgebox.memory: the malloc tuning is applied on glibc and steps aside for an operator's own setting."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from edgebox.memory import fix_mmap_threshold; print(fix_mmap_threshold())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_mmap_threshold_is_fixed_on_glibc_unless_the_operator_set_it():
    fresh = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    overridden = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True,
                                env={"MALLOC_MMAP_THRESHOLD_": "262144", "PATH": "/usr/bin:/bin"})
    assert fresh.stdout.strip() == "True"
    assert overridden.stdout.strip() == "False"

"""bench/cameras.py's memory line: summed over a real process tree, with the PSS that counts shared pages once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from bench.cameras import memory_breakdown


def test_a_parent_and_its_child_are_summed_and_their_shared_pages_counted_once():
    # A parent (the engine's place) with one child (the decoding process's) that holds 32 MB of its own; both map
    # the same interpreter and libraries, so their file-backed pages are shared.
    child_code = "import sys; held = bytearray(32 << 20); sys.stdin.read()"
    parent_code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child_code!r}], stdin=sys.stdin)"
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdin=subprocess.PIPE)
    try:
        line, deadline = "", time.monotonic() + 30
        while time.monotonic() < deadline:  # until the child has allocated its 32 MB
            line = memory_breakdown(parent.pid)
            held = re.search(r"child anonymous (\d+)", line)
            if held and int(held.group(1)) >= 32:
                break
            time.sleep(0.05)
    finally:
        parent.communicate(b"", timeout=30)

    summed = re.search(r"RSS (\d+) MB = anonymous (\d+) \+ file-backed (\d+); PSS (\d+) MB", line)
    assert summed, line
    rss, anonymous, file_backed, pss = map(int, summed.groups())
    assert "in 2 process(es)" in line
    assert abs(rss - anonymous - file_backed) <= 1  # each figure is rounded on its own
    assert pss < rss  # the libraries both map count once in the PSS, twice in the summed RSS
    engine_anonymous, child_anonymous = map(int, re.findall(r"(?:engine|child) anonymous (\d+)", line))
    assert child_anonymous >= 32
    assert abs(engine_anonymous + child_anonymous - anonymous) <= 1


def test_a_lone_process_has_no_split():
    line = memory_breakdown(os.getpid())
    assert "in 1 process(es)" in line
    assert "child" not in line

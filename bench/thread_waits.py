"""What a thread of a running engine waits for: a core, or the GIL. Used by `bench/grpc_calls.py --trace-waits`.

Three views, each from outside the engine, none of them needing a change to it:

- a core: the kernel's run-queue delay of the thread (`/proc/PID/task/TID/schedstat`: time spent runnable but
  not running, and the number of times it ran), as a mean per run; read around an untraced window, since a
  traced thread stops and runs again at every system call strace reports;
- the GIL: every futex wait of the thread, timed by `strace -T -e trace=futex`. A Python thread that wakes up
  (from epoll, say) must take the GIL before it runs Python; in CPython 3.11 a thread that finds it held sleeps on
  a condition variable (FUTEX_WAIT_BITSET) for up to the switch interval (5 ms), then asks the holder to drop it,
  and the GIL's own mutex is a futex too. The gRPC thread takes few other locks (a metric's, for a moment), so its
  futex waits are almost all GIL waits. strace stops the thread at every futex call, so the latencies measured
  while it is attached are not the engine's own;
- how busy the GIL is: `py-spy record --gil` samples only a thread that holds it, so its sample count over
  rate x seconds is the fraction of the time any Python thread held it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FUTEX_WAIT = re.compile(r"^futex\([^,]*, (FUTEX_WAIT[A-Z_|]*)[^<]*<([0-9.]+)>\s*$")
PYSPY_RATE_HZ = 200


def pyspy_path() -> str | None:
    """py-spy on PATH, or the one `pip install -e '.[dev]'` put beside this Python; None if neither exists."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def find_thread(pid: int, name: str) -> int:
    """The id of the thread of `pid` that the kernel knows by `name` (its comm)."""
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            if (task / "comm").read_text().strip() == name:
                return int(task.name)
        except OSError:  # the thread ended while we looked
            continue
    raise LookupError(f"process {pid} has no thread named {name!r}")


def schedstat(pid: int, tid: int) -> tuple[int, int, int]:
    """(ns on a CPU, ns runnable but waiting for one, number of times it ran) of one thread, from the kernel."""
    on_cpu, waiting, runs = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
    return int(on_cpu), int(waiting), int(runs)


def futex_waits_ms(strace_output: str) -> list[float]:
    """The duration of every futex wait in `strace -T` output, in milliseconds (wake calls are left out)."""
    return [float(m.group(2)) * 1000 for line in strace_output.splitlines() if (m := FUTEX_WAIT.match(line))]


def pyspy_samples(raw_output: str) -> int:
    """The number of samples in py-spy's raw (collapsed stacks) output: each line ends with its count."""
    total = 0
    for line in raw_output.splitlines():
        _, _, count = line.rpartition(" ")
        if count.isdigit():
            total += int(count)
    return total


@dataclass(frozen=True)
class CoreWaits:
    cpu_ms: float
    runs: int
    run_delay_ms: float  # summed over the runs

    @classmethod
    def between(cls, before: tuple[int, int, int], after: tuple[int, int, int]) -> CoreWaits:
        return cls((after[0] - before[0]) / 1e6, after[2] - before[2], (after[1] - before[1]) / 1e6)

    def summary(self) -> str:
        return (f"on a CPU {self.cpu_ms:.0f} ms in {self.runs} runs; waited for a core "
                f"{self.run_delay_ms / max(1, self.runs):.3f} ms per run on average, {self.run_delay_ms:.0f} ms in all")


@dataclass(frozen=True)
class GilWaits:
    futex_ms: list[float] | None  # each GIL wait; None when strace is missing or may not attach
    gil_busy: float | None  # fraction of the window some Python thread held the GIL; None without py-spy

    def summary(self, calls: int) -> str:
        parts = []
        if self.futex_ms is None:
            parts.append("GIL waits not measured (install strace; it must be allowed to attach: run as root or "
                         "with kernel.yama.ptrace_scope 0)")
        elif self.futex_ms:
            waits = sorted(self.futex_ms)
            n = len(waits)
            parts.append(f"GIL waits {n} ({n / max(1, calls):.1f} per call), {sum(waits):.0f} ms in all, "
                         f"p50 {waits[n // 2]:.2f} / p99 {waits[min(n - 1, int(n * 0.99))]:.2f} / "
                         f"max {waits[-1]:.2f} ms, {sum(w > 1 for w in waits)} over 1 ms, "
                         f"{sum(w > 4 for w in waits)} over 4 ms")
        if self.gil_busy is not None:
            parts.append(f"the GIL held {100 * self.gil_busy:.0f} % of the time (any thread)")
        return "; ".join(parts)


class GilTrace:
    """Attach to one thread for a window: `start()`, let the load run, `stop()` returns its GilWaits."""

    def __init__(self, pid: int, tid: int, seconds: float, folder: Path, pyspy: str | None) -> None:
        self.pid, self.tid, self.seconds, self.folder = pid, tid, seconds, folder
        self._strace_bin = shutil.which("strace")
        self._pyspy_bin = pyspy
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        if self._strace_bin:
            self._procs["strace"] = subprocess.Popen(
                [self._strace_bin, "-T", "-e", "trace=futex", "-p", str(self.tid), "-o", str(self.folder / "futex")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self._pyspy_bin:
            self._procs["py-spy"] = subprocess.Popen(
                [self._pyspy_bin, "record", "--pid", str(self.pid), "--gil", "--nonblocking", "--rate",
                 str(PYSPY_RATE_HZ), "--duration", f"{self.seconds:.0f}", "--format", "raw",
                 "--output", str(self.folder / "gil")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> GilWaits:
        strace = self._procs.pop("strace", None)
        attached = strace is not None and strace.poll() is None  # a strace that could not attach has exited
        if strace is not None:
            strace.terminate()
            strace.wait(30)
        spy = self._procs.pop("py-spy", None)
        if spy is not None:
            spy.wait(self.seconds + 60)
        futex_file, gil_file = self.folder / "futex", self.folder / "gil"
        futex_ms = futex_waits_ms(futex_file.read_text()) if attached and futex_file.exists() else None
        gil_busy = None
        if spy is not None and spy.returncode == 0 and gil_file.exists():
            gil_busy = pyspy_samples(gil_file.read_text()) / (PYSPY_RATE_HZ * self.seconds)
        return GilWaits(futex_ms, gil_busy)

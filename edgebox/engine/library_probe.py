"""Ask onnxruntime and OpenVINO what they can use, in a child process, so that the engine maps them only when a
model needs them.

Probing imports both libraries and loads every OpenVINO device plugin to enumerate its devices: about 70 MB of
resident memory that an engine with no model (or with a model on one backend) never uses again. The child is this
same program: `python -m edgebox _probe-libraries` from a source install, or the binary with `_probe-libraries`
(frozen, `sys.executable` is the unpacked build itself: nothing is unpacked again). It prints one JSON line. A
failed child is a logged fallback to probing in the engine's own process, never a failed start.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import trio

from edgebox.cli import own_command
from edgebox.engine.hardware import PROBE_CHILD_COMMAND, LibraryProbe, probe_libraries

log = logging.getLogger("edgebox.engine.hardware")

# OpenVINO's GPU plugin may take seconds to enumerate a real iGPU; a child stuck far beyond that is killed.
PROBE_TIMEOUT_S = 60.0
STDERR_SHOWN = 400  # characters of a failed child's stderr quoted in the log


def child_argv() -> list[str]:
    return own_command(PROBE_CHILD_COMMAND)


def parse_probe(stdout: bytes) -> LibraryProbe:
    """The child's answer (its last line of output); raises ValueError for anything else."""
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    if not lines:
        raise ValueError("it printed nothing")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise ValueError(f"it printed {lines[-1][:80]!r}, not a JSON object")  # noqa: TRY004 - its output
    try:
        return LibraryProbe(
            onnxruntime_providers=tuple(str(p) for p in data["onnxruntime_providers"]),
            openvino_devices=tuple(str(d) for d in data["openvino_devices"]),
            tensorrt_installed=bool(data["tensorrt_installed"]),
            problems=tuple(str(p) for p in data.get("problems", ())),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"its answer lacks {exc}") from None


class ProbeChildFailed(Exception):
    """The probing child crashed, hung or printed no answer; the message says which."""


class ProbeChild:
    """The probing child process. The command line starts it before the engine's own imports, so that the two
    overlap (each is about 0.6 s here); the engine then awaits its answer."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv or child_argv()
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._start_error = ""
        except OSError as exc:
            self._proc, self._start_error = None, f"it could not be started: {exc}"

    async def answer(self, timeout_s: float = PROBE_TIMEOUT_S) -> LibraryProbe:
        """The child's answer; raises ProbeChildFailed. A child that outlives `timeout_s` (or the caller's
        cancellation) is killed."""
        proc = self._proc
        if proc is None:
            raise ProbeChildFailed(self._start_error)
        try:
            with trio.move_on_after(timeout_s) as waited:
                stdout, stderr = await trio.to_thread.run_sync(proc.communicate, abandon_on_cancel=True)
        finally:
            if proc.poll() is None:
                proc.kill()  # a hung probe has nothing to clean up; the abandoned thread then reaps it
        if waited.cancelled_caught:
            raise ProbeChildFailed(f"it did not answer within {timeout_s:g} s and was killed")
        if proc.returncode != 0:
            shown = stderr.decode("utf-8", "replace").strip()[-STDERR_SHOWN:]
            raise ProbeChildFailed(f"it exited with status {proc.returncode}: {shown or 'no output'}")
        try:
            return parse_probe(stdout)
        except ValueError as exc:
            raise ProbeChildFailed(str(exc)) from None

    def close(self) -> None:
        """Kill the child if nobody awaited its answer (the engine failed to start before it did)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()


def libraries_loaded() -> bool:
    """Both libraries are in this process already (the tests, an embedding program): a child saves nothing."""
    return "onnxruntime" in sys.modules and "openvino" in sys.modules


async def probe_libraries_isolated(child: ProbeChild | None = None, timeout_s: float = PROBE_TIMEOUT_S
                                   ) -> LibraryProbe:
    """probe_libraries() in a child process (`child` when one was started already); in this process when the
    libraries are loaded here anyway, or, logged as a fallback, when the child fails."""
    if child is None:
        if libraries_loaded():
            return await trio.to_thread.run_sync(probe_libraries)
        child = ProbeChild()
    try:
        return await child.answer(timeout_s)
    except ProbeChildFailed as exc:
        log.warning("FALLBACK: probing onnxruntime and OpenVINO in a child process failed (%s); probing in the "
                    "engine's own process instead, which keeps ~70 MB more resident", exc)
        return await trio.to_thread.run_sync(probe_libraries)

"""Test-side control of a real RTSP server (``tests/support/rtsp_server.py``).

The server needs GStreamer's Python bindings, which only import under Debian's
``/usr/bin/python3``; this module does not import ``gi`` and works from any Python
(the project venv). Install the system packages with
``scripts/install-system-deps.sh``.

    from tests.support.rtsp import RtspServer, pattern_mount

    with RtspServer([pattern_mount("/ball")]) as server:
        url = server.url("/ball")        # rtsp://127.0.0.1:PORT/ball
        server.freeze(); server.thaw()   # SIGSTOP / SIGCONT: a hung camera
        server.kill()                    # SIGKILL: a camera that vanished
        server.restart()                 # same port, same mounts
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
# Debian's python with python3-gi; override with EDGEBOX_RTSP_PYTHON.
SYSTEM_PYTHON = os.environ.get("EDGEBOX_RTSP_PYTHON", "/usr/bin/python3")
PORT_IN_USE = 3  # rtsp_server.py exit status when it cannot listen
INSTALL_HINT = "scripts/install-system-deps.sh (as root; apt-get installs gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi ...)"


class RtspServerError(RuntimeError):
    """The RTSP test server could not be started.

    ``returncode`` is the server's exit status when it exited (3 = port in use).
    """

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def pattern_mount(
    path: str,
    pattern: str = "ball",
    width: int = 640,
    height: int = 360,
    fps: int = 10,
    **extra: Any,
) -> dict:
    """A live videotestsrc mount. ``extra`` may hold ``user``/``password``/``bitrate``."""
    return {
        "path": path,
        "kind": "pattern",
        "pattern": pattern,
        "width": width,
        "height": height,
        "fps": fps,
        **extra,
    }


def image_mount(
    path: str,
    file: str | os.PathLike,
    width: int = 640,
    height: int = 360,
    fps: int = 10,
    **extra: Any,
) -> dict:
    """A still image (png/jpg) served as a live stream, scaled into width x height."""
    return {
        "path": path,
        "kind": "image",
        "file": os.fspath(Path(file).resolve()),
        "width": width,
        "height": height,
        "fps": fps,
        **extra,
    }



def person_and_ball_mounts(count: int, photo: str | os.PathLike) -> list[dict]:
    """`count` mounts for load runs: the photo (a person) on the even ones, the moving ball on the odd ones."""
    return [image_mount(f"/person{i}", photo) if i % 2 == 0 else pattern_mount(f"/ball{i}") for i in range(count)]


@functools.cache
def gi_rtsp_available(python: str = SYSTEM_PYTHON) -> tuple[bool, str]:
    """Whether ``python`` can import GstRtspServer via gi. Returns (ok, reason)."""
    if not os.access(python, os.X_OK):
        return False, f"{python} not found"
    code = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer"
    )
    try:
        proc = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python}: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return False, lines[-1] if lines else f"exit status {proc.returncode}"
    return True, ""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RtspServer:
    """A real RTSP server in a subprocess; see the module docstring.

    ``mounts`` is a list of mount dicts (see ``pattern_mount``/``image_mount`` and
    ``rtsp_server.py``). ``port=None`` picks a free port once; ``restart()`` reuses it.
    """

    def __init__(
        self,
        mounts: Iterable[dict],
        port: int | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 15.0,
        python: str = SYSTEM_PYTHON,
        start: bool = False,
    ) -> None:
        self.mounts = [dict(m) for m in mounts]
        if not self.mounts:
            raise ValueError("RtspServer needs at least one mount")
        self.host = host
        self.port = port if port else free_port(host)
        # An auto-picked port may be taken by someone else before the server binds it;
        # until the first successful start a fresh port is then picked.
        self._repick_port = not port
        self.ready_timeout = ready_timeout
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.frozen = False
        self._stderr_file: Any = None
        if start:
            self.start()

    # ---- URLs -----------------------------------------------------------------------
    def url(
        self, path: str = "/", user: str | None = None, password: str | None = None
    ) -> str:
        """``rtsp://127.0.0.1:PORT/path``; with credentials ``rtsp://user:password@...``."""
        if not path.startswith("/"):
            path = "/" + path
        cred = ""
        if user is not None:
            from urllib.parse import quote

            cred = quote(user, safe="") + (":" + quote(password or "", safe="")) + "@"
        return f"rtsp://{cred}{self.host}:{self.port}{path}"

    # ---- lifecycle ------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        """True while the process exists (also when frozen)."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RtspServer:
        """Start the server and wait for ``READY``; raises RtspServerError with its stderr."""
        attempts = 5 if self._repick_port else 1
        for attempt in range(attempts):
            try:
                self._start_once()
            except RtspServerError as exc:
                if exc.returncode != PORT_IN_USE or attempt == attempts - 1:
                    raise
                self.port = free_port(self.host)
            else:
                self._repick_port = (
                    False  # from now on the port is fixed (restart() reuses it)
                )
                return self
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        if self.running:
            raise RtspServerError(f"RTSP server already running (pid {self.proc.pid})")
        ok, reason = gi_rtsp_available(self.python)
        if not ok:
            raise RtspServerError(
                f"cannot run the RTSP test server: {reason}. Install: {INSTALL_HINT}"
            )
        self._close_stderr()
        # stderr goes to a file, never a pipe: GStreamer warnings must not fill a pipe
        # nobody reads and block the server.
        self._stderr_file = tempfile.TemporaryFile(prefix="rtsp-server-stderr-")  # noqa: SIM115 (lives with the process)
        cmd = [
            self.python,
            str(SERVER_SCRIPT),
            "--port",
            str(self.port),
            "--address",
            self.host,
            "--mounts",
            json.dumps(self.mounts),
        ]
        self.frozen = False
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            close_fds=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self._terminate(kill_only=True)
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RtspServerError(
                    f"RTSP server did not print READY within {self.ready_timeout:.1f} s "
                    f"(port {self.port}); stdout={buf!r}; stderr:\n{self.stderr_text()}"
                )
            readable, _, _ = select.select([fd], [], [], min(left, 0.2))
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: the process exited
                    code = self.proc.wait(timeout=5)
                    raise RtspServerError(
                        f"RTSP server exited with status {code} before READY (port {self.port}); "
                        f"stderr:\n{self.stderr_text()}",
                        returncode=code,
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        parts = line.split()
        if len(parts) != 2 or parts[0] != "READY" or parts[1] != str(self.port):
            raise RtspServerError(
                f"unexpected first line from RTSP server: {line!r}; stderr:\n{self.stderr_text()}"
            )

    def stderr_text(self) -> str:
        """What the server wrote on stderr so far (current process)."""
        f = self._stderr_file
        if f is None or f.closed:
            return ""
        try:
            f.flush()
            pos = f.tell()
            f.seek(0)
            data = f.read()
            f.seek(pos)
        except (OSError, ValueError):
            return ""
        return data.decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (thawing a frozen server first), then SIGKILL after ``timeout``. Idempotent.

        Returns the exit status, or None when nothing was running.
        """
        return self._terminate(timeout=timeout)

    def kill(self) -> int | None:
        """SIGKILL: the server vanishes at once, its clients see connection resets."""
        return self._terminate(kill_only=True)

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open (and new TCP connects still complete in the kernel
        backlog) but nothing is sent or answered: a hung camera."""
        self._require_running("freeze")
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: resume a frozen server."""
        self._require_running("thaw")
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, retry_for: float = 10.0) -> RtspServer:
        """Stop whatever runs and start again on the SAME port and mounts.

        Binding is retried for ``retry_for`` seconds while the port is busy (exit status 3).
        """
        self.stop()
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return self.start()
            except RtspServerError as exc:
                if exc.returncode != PORT_IN_USE or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _require_running(self, what: str) -> None:
        if not self.running:
            raise RtspServerError(f"cannot {what}: RTSP server is not running")

    def _terminate(self, timeout: float = 5.0, kill_only: bool = False) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        code = proc.poll()
        if code is None:
            if kill_only:
                proc.kill()
            else:
                proc.send_signal(signal.SIGTERM)
                if self.frozen:  # a stopped process only handles SIGTERM once continued
                    os.kill(proc.pid, signal.SIGCONT)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        self.frozen = False
        return code

    def _close_stderr(self) -> None:
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def close(self) -> None:
        """Stop the server and release the stderr file."""
        try:
            self.stop()
        finally:
            self._close_stderr()

    # ---- context manager ------------------------------------------------------------
    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else ("running" if self.running else "stopped")
        return f"<RtspServer {self.host}:{self.port} {state} mounts={[m['path'] for m in self.mounts]}>"

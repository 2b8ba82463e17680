"""Plugin crash reports in the engine log: one traceback per distinct crash and window, however often it repeats.

A plugin that raises on every frame of 50 cameras at 2 fps would otherwise write 100 tracebacks a second. This
module owns only what goes to the log and which incident id a crash gets; what the client or the camera's result
says about the crash stays in edgebox/workflows/runtime.py.
"""

from __future__ import annotations

import logging
import traceback
from collections import OrderedDict
from dataclasses import dataclass

import trio

from edgebox.errors import new_incident_id

# Identical crashes within this many seconds of a logged traceback share its incident id and are only counted.
CRASH_REPEAT_WINDOW_S = 60.0
# Distinct crashes remembered per workflow runtime; the least recent is forgotten first (and logged afresh).
MAX_TRACKED_CRASHES = 256

CrashSignature = tuple[str, str, tuple[tuple[str, int], ...]]


@dataclass
class _Incident:
    incident_id: str
    logged_at: float
    repeats: int = 0


class CrashLog:
    """Logs a plugin's crash with its traceback once per window; repeats reuse the incident id and are counted.

    A crash is identified by the plugin, the exception's type and the code locations of its traceback, not by its
    message, which often carries per-frame values. Every incident id handed out is one whose traceback is in the
    log. The count of repeats is logged with the first identical crash after the window, before its new traceback.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._incidents: OrderedDict[CrashSignature, _Incident] = OrderedDict()

    def report(self, plugin_name: str, exc: BaseException) -> str:
        """Record one crash of `plugin_name`; returns the incident id under which its traceback is logged."""
        signature = crash_signature(plugin_name, exc)
        now = trio.current_time()
        incident = self._incidents.get(signature)
        if incident is not None and now - incident.logged_at < CRASH_REPEAT_WINDOW_S:
            incident.repeats += 1
            self._incidents.move_to_end(signature)
            return incident.incident_id
        if incident is not None:
            self._log_repeats(plugin_name, incident)
        fresh = _Incident(new_incident_id(), now)
        self._incidents[signature] = fresh
        self._incidents.move_to_end(signature)
        while len(self._incidents) > MAX_TRACKED_CRASHES:
            (forgotten_plugin, _, _), forgotten = self._incidents.popitem(last=False)
            self._log_repeats(forgotten_plugin, forgotten)
        self._log.error("plugin %s raised on a frame (incident %s; the same crash again within %g s is counted, "
                        "not logged again)", plugin_name, fresh.incident_id, CRASH_REPEAT_WINDOW_S, exc_info=exc)
        return fresh.incident_id

    def _log_repeats(self, plugin_name: str, incident: _Incident) -> None:
        if incident.repeats:
            self._log.error("plugin %s raised the same error %d more time(s) within %g s of incident %s",
                            plugin_name, incident.repeats, CRASH_REPEAT_WINDOW_S, incident.incident_id)


def crash_signature(plugin_name: str, exc: BaseException) -> CrashSignature:
    """The plugin, the exception's qualified type and where its traceback ran (file and line of each frame)."""
    kind = type(exc)
    places = tuple((frame.f_code.co_filename, line) for frame, line in traceback.walk_tb(exc.__traceback__))
    return plugin_name, f"{kind.__module__}.{kind.__qualname__}", places

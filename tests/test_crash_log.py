"""CrashLog: which crashes share an incident and a logged traceback, on trio's MockClock."""

from __future__ import annotations

import logging

import pytest

from edgebox.workflows import crash_log
from edgebox.workflows.crash_log import CRASH_REPEAT_WINDOW_S, CrashLog, crash_signature

log = logging.getLogger("tests.crash_log")


def _raised(fn, *args) -> BaseException:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test wants whatever it raised
        return exc
    raise AssertionError("did not raise")


def divide(n: int) -> float:
    return 1 / n


def index(n: int) -> int:
    return [][n]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


def reject(n: int) -> None:
    raise ValueError(f"frame {n} is not what the plugin expects")


async def test_a_repeat_from_the_same_place_shares_the_incident_even_with_another_message(mock_clock, caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    crashes = CrashLog(log)
    first = crashes.report("p", _raised(reject, 1))
    assert crashes.report("p", _raised(reject, 2)) == first
    assert len(tracebacks(caplog)) == 1 and "frame 1 is" in caplog.text and "frame 2 is" not in caplog.text


async def test_the_same_exception_reached_through_another_call_path_is_its_own_incident(mock_clock, caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    crashes = CrashLog(log)
    first = crashes.report("p", _raised(divide, 0))
    assert crashes.report("p", _raised(lambda: divide(0))) != first
    assert len(tracebacks(caplog)) == 2


async def test_another_exception_type_or_plugin_is_its_own_incident(mock_clock, caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    crashes = CrashLog(log)
    ids = {crashes.report("p", _raised(divide, 0)), crashes.report("p", _raised(index, 3)),
           crashes.report("q", _raised(divide, 0))}
    assert len(ids) == 3
    assert [r.exc_info[0] for r in tracebacks(caplog)] == [ZeroDivisionError, IndexError, ZeroDivisionError]


async def test_the_window_counts_from_the_logged_traceback_not_from_the_last_repeat(mock_clock, caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    crashes = CrashLog(log)
    first = crashes.report("p", _raised(divide, 0))
    for _ in range(3):
        mock_clock.jump(CRASH_REPEAT_WINDOW_S / 4)
        assert crashes.report("p", _raised(divide, 0)) == first
    mock_clock.jump(CRASH_REPEAT_WINDOW_S / 4)
    second = crashes.report("p", _raised(divide, 0))
    assert second != first
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert f"the same error 3 more time(s) within {CRASH_REPEAT_WINDOW_S:g} s of incident {first}" in messages[1]
    assert second in messages[2]


async def test_a_crash_with_no_repeats_logs_no_count_after_the_window(mock_clock, caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    crashes = CrashLog(log)
    crashes.report("p", _raised(divide, 0))
    mock_clock.jump(CRASH_REPEAT_WINDOW_S)
    crashes.report("p", _raised(divide, 0))
    assert len(caplog.records) == 2 and len(tracebacks(caplog)) == 2


async def test_the_least_recent_crash_is_forgotten_past_the_bound_with_its_count(mock_clock, caplog, monkeypatch):
    monkeypatch.setattr(crash_log, "MAX_TRACKED_CRASHES", 2)
    caplog.set_level(logging.ERROR, logger=log.name)
    crashes = CrashLog(log)
    a = crashes.report("a", _raised(divide, 0))
    crashes.report("b", _raised(divide, 0))
    assert crashes.report("a", _raised(divide, 0)) == a  # a is now the most recent
    crashes.report("c", _raised(divide, 0))  # forgets b, which had no repeats
    assert crashes.report("a", _raised(divide, 0)) == a
    assert not [r for r in caplog.records if "more time(s)" in r.getMessage()]
    crashes.report("d", _raised(divide, 0))  # forgets c
    crashes.report("e", _raised(divide, 0))  # forgets a, so its two repeats are logged
    assert crashes.report("a", _raised(divide, 0)) != a
    assert [r.getMessage().split()[1] for r in tracebacks(caplog)] == ["a", "b", "c", "d", "e", "a"]
    [count] = [r.getMessage() for r in caplog.records if "more time(s)" in r.getMessage()]
    assert count.startswith("plugin a raised the same error 2 more time(s)") and count.endswith(a)


def test_the_signature_names_type_and_places_not_the_message():
    one, other = _raised(divide, 0), _raised(divide, 0)
    assert str(one) == str(other)
    assert crash_signature("p", one) == crash_signature("p", other)
    plugin, kind, places = crash_signature("p", one)
    assert (plugin, kind) == ("p", "builtins.ZeroDivisionError")
    assert places[-1][0] == __file__ and len(places) == 2  # _raised, then divide

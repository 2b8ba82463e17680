"""HTTP/2 settings (RFC 9113 6.5): the values the server advertises, and when ours take effect."""

from __future__ import annotations

from h2.settings import SettingCodes

from edgebox.api.http2.hpack import DEFAULT_TABLE_SIZE

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_CONCURRENT_STREAMS = 100  # what h2 advertised for grpclib; more streams at once are refused (REFUSED_STREAM)
MAX_HEADER_LIST_SIZE = 65536  # decoded request headers, RFC 7541 sizes; as h2 advertised


class LocalSettings:
    """Our settings as in effect: the values of a SETTINGS frame we send apply once the peer acknowledges it."""

    __slots__ = (
        "_unacknowledged",
        "header_table_size",
        "initial_window_size",
        "max_concurrent_streams",
        "max_frame_size",
        "max_header_list_size",
    )

    def __init__(self) -> None:
        self.header_table_size = DEFAULT_TABLE_SIZE
        self.initial_window_size = DEFAULT_WINDOW
        self.max_concurrent_streams = MAX_CONCURRENT_STREAMS
        self.max_header_list_size = MAX_HEADER_LIST_SIZE
        self.max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._unacknowledged: list[dict[int, int]] = []

    def sent(self, values: dict[int, int]) -> None:
        """A SETTINGS frame carrying these values was queued to the peer."""
        self._unacknowledged.append(values)

    def acknowledged(self) -> dict[int, int]:
        """Apply the oldest unacknowledged SETTINGS frame; returns its values ({} if none was outstanding)."""
        if not self._unacknowledged:
            return {}
        values = self._unacknowledged.pop(0)
        for code, value in values.items():
            if code == SettingCodes.HEADER_TABLE_SIZE:
                self.header_table_size = value
            elif code == SettingCodes.INITIAL_WINDOW_SIZE:
                self.initial_window_size = value
            elif code == SettingCodes.MAX_CONCURRENT_STREAMS:
                self.max_concurrent_streams = value
            elif code == SettingCodes.MAX_HEADER_LIST_SIZE:
                self.max_header_list_size = value
            elif code == SettingCodes.MAX_FRAME_SIZE:
                self.max_frame_size = value
        return values


def setting_code(code: int) -> SettingCodes | int:
    """h2's SettingCodes member for a setting's number, or the number itself for one h2 does not name."""
    try:
        return SettingCodes(code)
    except ValueError:
        return code

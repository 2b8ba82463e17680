"""Checks that a decoded request or trailer field list is well-formed HTTP/2 (RFC 9113 8.2 and 8.3), and turns it
into the (str, str) pairs grpclib reads. A malformed one is a stream error of type PROTOCOL_ERROR (8.1.1)."""

from __future__ import annotations

import re

REQUEST_PSEUDO_HEADERS = frozenset({b":method", b":scheme", b":authority", b":path"})
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
CHECKED_FIELDS_KEPT = 4096  # well-formed fields remembered, so a steady connection checks each field once
CHECKED_FIELD_MAX_BYTES = 256  # longer fields are checked every time: remembering them could cost 4096 x 64 KiB

_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff:]")  # 8.2.1; a pseudo-header is checked without its colon
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")  # 8.2.1

_checked: dict[tuple[bytes, bytes], tuple[str, str]] = {}


class MalformedFields(Exception):
    """The field list breaks RFC 9113 8.2 or 8.3; the message says how."""


def _checked_field(field: tuple[bytes, bytes]) -> tuple[str, str]:
    known = _checked.get(field)
    if known is not None:
        return known
    name, value = field
    if not name or _BAD_NAME.search(name, 1 if name[0] == 0x3A else 0):
        raise MalformedFields(f"the field name {name!r} is not a lowercase token")
    if _BAD_VALUE.search(value):
        raise MalformedFields(f"the value of {name!r} has a NUL, CR or LF, or white space at an end")
    decoded = (name.decode("latin-1"), value.decode("latin-1"))
    if len(name) + len(value) <= CHECKED_FIELD_MAX_BYTES:
        if len(_checked) >= CHECKED_FIELDS_KEPT:
            _checked.clear()
        _checked[field] = decoded
    return decoded


def request_fields(fields: list[tuple[bytes, bytes]]) -> tuple[list[tuple[str, str]], int | None]:
    """The request's fields as grpclib reads them, and its content-length (None if it sent none)."""
    out = []
    pseudo: set[bytes] = set()
    regular_seen = False
    content_length = None
    for field in fields:
        name, value = field
        if name[:1] == b":":
            if regular_seen:
                raise MalformedFields(f"the pseudo-header {name!r} comes after a regular field")
            if name not in REQUEST_PSEUDO_HEADERS:
                raise MalformedFields(f"{name!r} is not a request pseudo-header")
            if name in pseudo:
                raise MalformedFields(f"the pseudo-header {name!r} appears twice")
            pseudo.add(name)
            if name == b":path" and not value:
                raise MalformedFields("the :path pseudo-header is empty")
        else:
            regular_seen = True
            if name in CONNECTION_SPECIFIC:
                raise MalformedFields(f"the connection-specific field {name!r} is not allowed in HTTP/2")
            if name == b"te" and value != b"trailers":
                raise MalformedFields("the te field may only be 'trailers'")
            if name == b"content-length":
                if not value.isdigit():
                    raise MalformedFields(f"content-length {value!r} is not a number")
                content_length = int(value)
        out.append(_checked_field(field))
    if b":method" not in pseudo:
        raise MalformedFields("the request has no :method pseudo-header")
    if b":scheme" not in pseudo or b":path" not in pseudo:
        raise MalformedFields("the request lacks a :scheme or :path pseudo-header")
    return out, content_length


def trailer_fields(fields: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The trailers as grpclib reads them; they may not carry pseudo-headers (8.1)."""
    for name, _ in fields:
        if name[:1] == b":":
            raise MalformedFields(f"the trailers carry the pseudo-header {name!r}")
    return [_checked_field(field) for field in fields]

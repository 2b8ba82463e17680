"""Camera source URLs: which forms are accepted, how they are split, and how they are shown without secrets.

Owns `validate_source_url` (run by AddCamera before anything starts) and `mask_url`; it opens nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from edgebox.errors import InvalidRequest

MAX_URL_LENGTH = 2048
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEMO_KINDS = ("person", "empty")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SourceUrl:
    """A validated URL split for the sources: kind is 'network', 'file' or 'demo'."""

    kind: str
    scheme: str  # "" for a plain path
    target: str  # the URL for network sources, the filesystem path for files, the demo kind
    parts: SplitResult | None = None  # network sources only


def parse_source_url(url: str) -> SourceUrl:
    """Split a source URL; raises InvalidRequest for an unsupported or malformed one."""
    shown = mask_url(url)
    if not url:
        raise InvalidRequest("camera url is empty; give rtsp://, rtsps://, http(s)://, file://, demo:// or a path")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"camera url is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
    if _CONTROL.search(url):
        raise InvalidRequest(f"camera url {shown!r} contains control characters")
    match = _SCHEME.match(url)
    if match is None:  # a plain filesystem path
        return SourceUrl("file", "", url)
    scheme = match.group(1).lower()
    if scheme in NETWORK_SCHEMES:
        return _network(url, scheme, shown)
    if scheme == "file":
        parts = _split(url, shown)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise InvalidRequest(f"camera url {shown!r}: use file:///absolute/path (no host)")
        return SourceUrl("file", scheme, unquote(parts.path))
    if scheme == "demo":
        kind = url[len("demo:") :].lstrip("/").lower()
        if kind not in DEMO_KINDS:
            raise InvalidRequest(f"camera url {shown!r}: demo sources are {', '.join('demo://' + k for k in DEMO_KINDS)}")
        return SourceUrl("demo", scheme, kind)
    raise InvalidRequest(
        f"camera url scheme {scheme!r} is not supported; use rtsp, rtsps, http, https, file, demo or a plain path"
    )


def validate_source_url(url: str) -> str:
    """Check a camera URL before anything starts; returns it unchanged or raises InvalidRequest."""
    parse_source_url(url)
    return url


def _network(url: str, scheme: str, shown: str) -> SourceUrl:
    if any(c.isspace() for c in url):
        raise InvalidRequest(f"camera url {shown!r} contains whitespace; percent-encode it")
    parts = _split(url, shown)
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequest(f"camera url {shown!r} has an invalid port; allowed 1..65535") from None
    if not parts.hostname:
        raise InvalidRequest(f"camera url {shown!r} has no host; expected {scheme}://host[:port]/path")
    if port == 0:
        raise InvalidRequest(f"camera url {shown!r} has port 0; allowed 1..65535")
    return SourceUrl("network", scheme, url, parts)


def _split(url: str, shown: str) -> SplitResult:
    try:  # urlsplit raises ValueError for a malformed host, e.g. "http://[::1" or "rtsp://[zz]/"
        return urlsplit(url)
    except ValueError as exc:
        raise InvalidRequest(f"camera url {shown!r} is malformed: {exc}") from None


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs, errors and status."""
    scheme, sep, rest = url.partition("://")
    # Split at the LAST "@" before any query: a raw "/" or "@" inside a password then still gets masked
    # (at worst an odd path is over-masked, never a password shown).
    head = rest.split("?", 1)[0]
    userinfo, at, _ = head.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{rest[len(userinfo) + 1:]}"


def credentials(parts: SplitResult) -> tuple[str, str] | None:
    """(user, password) from the URL, percent-decoded; None when the URL has no user."""
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")

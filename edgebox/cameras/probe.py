"""Tell why a network stream would not open: cv2 only says False, so ask the server ourselves.

Blocking stdlib code (run it in a worker thread): a TCP connect tells REFUSED / TIMEOUT / unknown host, an RTSP
DESCRIBE or HTTP GET tells 404 / 401 and whether the stream has a decodable video track. Messages hold no password.
`preflight_failure` is the cheaper check before every open: connect and RTSP OPTIONS only.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import socket
import ssl
from urllib.parse import SplitResult

from edgebox.cameras.state import StreamError, StreamFailure
from edgebox.cameras.urls import DEFAULT_PORTS, credentials

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "edgebox-probe"
# RTP encoding names FFmpeg decodes (RFC 3551/6184/7798/7587...); anything else is UNSUPPORTED_CODEC.
DECODABLE_ENCODINGS = frozenset({"H264", "H265", "HEVC", "JPEG", "MP4V-ES", "VP8", "VP9", "AV1", "H263",
                                 "H263-1998", "H263-2000", "MPV", "MP2T", "RAW"})


def preflight_failure(parts: SplitResult, timeout: float) -> StreamFailure | None:
    """A quick RTSP OPTIONS before OpenCV opens an RTSP URL: the failure when the host is unknown, the server
    refuses or does not answer within `timeout`; None when FFmpeg should try (any answer, even 401: FFmpeg may
    know better).

    OpenCV holds one process-wide lock through every open, so a server that accepts TCP but never answers would
    hold every other camera's (re)connection for the whole open timeout; this keeps it out of that lock.

    OPTIONS, not DESCRIBE: a DESCRIBE makes servers with shared media (gst-rtsp-server, hence many NVRs) build
    the stream's pipeline and tear it down again when this connection closes, and FFmpeg's own DESCRIBE a moment
    later then meets the teardown and gets 503 (measured: 3 of 10 opens on the test server). OPTIONS touches no
    media; 404 and 401 are told apart by probe_failure after a failed open.
    """
    sock = _connect(parts, timeout)
    if isinstance(sock, StreamFailure):
        return sock
    try:
        if parts.scheme == "rtsps":
            sock = _tls(sock, parts.hostname or "")
        _rtsp_request(sock, "OPTIONS", _rtsp_uri(parts), 1, None)
        return None
    except TimeoutError:
        return _no_answer(parts, timeout)
    except (OSError, ValueError):
        return None  # something answered, or the connection broke: FFmpeg's open and probe_failure tell which
    finally:
        sock.close()


def probe_failure(parts: SplitResult, timeout: float) -> StreamFailure:
    """Classify a network source that failed to open; returns (does not raise) the StreamFailure."""
    sock = _connect(parts, timeout)
    if isinstance(sock, StreamFailure):
        return sock
    where = _where(parts)
    try:
        if parts.scheme in ("rtsps", "https"):
            sock = _tls(sock, parts.hostname or "")
        if parts.scheme in ("rtsp", "rtsps"):
            return _probe_rtsp(sock, parts, where)
        sock.close()
        return _probe_http(parts, where, timeout)
    except TimeoutError:
        return _no_answer(parts, timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return StreamFailure(StreamError.OTHER, f"{where}: {type(exc).__name__}: {exc}")
    finally:
        sock.close()


def _where(parts: SplitResult) -> str:
    return f"{parts.hostname or ''}:{parts.port or DEFAULT_PORTS[parts.scheme]}"


def _rtsp_uri(parts: SplitResult) -> str:
    """The URL as sent in an RTSP request line: without credentials or fragment."""
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], fragment="").geturl()


def _no_answer(parts: SplitResult, timeout: float) -> StreamFailure:
    return StreamFailure(StreamError.TIMEOUT, f"{_where(parts)} accepted the connection but did not answer "
                                              f"within {timeout:.1f} s")


def _connect(parts: SplitResult, timeout: float) -> socket.socket | StreamFailure:
    """A TCP connection to the URL's host and port, or the failure that says why there is none."""
    host, port, where = parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme], _where(parts)
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        return StreamFailure(StreamError.NOT_FOUND, f"host name {host!r} does not resolve")
    except ConnectionRefusedError:
        return StreamFailure(StreamError.REFUSED, f"connection refused by {where} (nothing listening)")
    except TimeoutError:
        return StreamFailure(StreamError.TIMEOUT, f"no answer from {where} within {timeout:.1f} s")
    except OSError as exc:
        return StreamFailure(StreamError.TIMEOUT, f"cannot reach {where}: {exc.strerror or exc}")


def _tls(sock: socket.socket, host: str) -> ssl.SSLSocket:
    return _unverified_context().wrap_socket(sock, server_hostname=host)


def _probe_rtsp(sock: socket.socket, parts: SplitResult, where: str) -> StreamFailure:
    uri = _rtsp_uri(parts)
    status, reason, headers, body = _rtsp_request(sock, "DESCRIBE", uri, 1, None)
    creds = credentials(parts)
    if status == 401 and creds is not None:
        challenge = _pick_challenge(headers)
        if challenge is not None:
            status, reason, headers, body = _rtsp_request(sock, "DESCRIBE", uri, 2,
                                                          _authorization(challenge, creds, uri))
    path = parts.path or "/"
    if status == 401:
        why = "credentials were rejected" if creds else "it needs credentials (add user:password@ to the URL)"
        return StreamFailure(StreamError.UNAUTHORIZED, f"{where} answered 401 for {path}: {why}")
    if status == 403:
        return StreamFailure(StreamError.UNAUTHORIZED, f"{where} answered 403 Forbidden for {path}")
    if status in (404, 410):
        return StreamFailure(StreamError.NOT_FOUND, f"{where} has no stream at {path} ({status} {reason})")
    if status != 200:
        return StreamFailure(StreamError.OTHER, f"{where} answered DESCRIBE {path} with {status} {reason}")
    return _classify_sdp(body.decode("utf-8", "replace"), where, path)


def _classify_sdp(sdp: str, where: str, path: str) -> StreamFailure:
    video = re.findall(r"^m=video \d+\S* \S+ (\d+)", sdp, re.MULTILINE)
    if not video:
        return StreamFailure(StreamError.UNSUPPORTED_CODEC, f"{where}{path} offers no video track")
    names = dict(re.findall(r"^a=rtpmap:(\d+) ([^/\s]+)", sdp, re.MULTILINE))
    # Static payload types (RFC 3551) carry no rtpmap: 26 JPEG, 32 MPV, 33 MP2T, 34 H263.
    static = {"26": "JPEG", "32": "MPV", "33": "MP2T", "34": "H263"}
    codecs = [names.get(pt, static.get(pt, f"payload {pt}")).upper() for pt in video]
    if not any(c in DECODABLE_ENCODINGS for c in codecs):
        return StreamFailure(StreamError.UNSUPPORTED_CODEC, f"{where}{path} offers video as {', '.join(codecs)}, "
                                                            "which FFmpeg here cannot decode")
    return StreamFailure(StreamError.OTHER, f"{where}{path} describes a {', '.join(codecs)} stream but FFmpeg could "
                                            "not set it up (transport blocked? try transport=tcp)")


def _rtsp_request(sock: socket.socket, method: str, uri: str, cseq: int, authorization: str | None
                  ) -> tuple[int, str, list[tuple[str, str]], bytes]:
    lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {cseq}", f"User-Agent: {USER_AGENT}"]
    if method == "DESCRIBE":
        lines.append("Accept: application/sdp")
    if authorization:
        lines.append(f"Authorization: {authorization}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > MAX_RESPONSE_BYTES:
            raise ValueError("not an RTSP server (no complete response)")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    first, *rest = head.decode("latin-1").split("\r\n")
    match = re.match(r"RTSP/\d\.\d (\d{3}) ?(.*)", first)
    if match is None:
        raise ValueError(f"not an RTSP server (answered {first[:60]!r})")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in rest)]
    length = min(int(dict(headers).get("content-length", "0") or 0), MAX_RESPONSE_BYTES)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return int(match.group(1)), match.group(2), headers, body


def _pick_challenge(headers: list[tuple[str, str]]) -> tuple[str, dict[str, str]] | None:
    challenges = [v for k, v in headers if k == "www-authenticate"]
    for wanted in ("digest", "basic"):  # prefer Digest: Basic would send the password in clear
        for value in challenges:
            scheme, _, params = value.partition(" ")
            if scheme.lower() == wanted:
                found = re.finditer(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', params)
                return wanted, {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in found}
    return None


def _authorization(challenge: tuple[str, dict[str, str]], creds: tuple[str, str], uri: str) -> str:
    scheme, params = challenge
    user, password = creds
    if scheme == "basic":
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"DESCRIBE:{uri}")
    fields = f'username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in params.get("qop", "").split(","):
        cnonce = os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        return f'Digest {fields}, response="{response}", qop=auth, nc=00000001, cnonce="{cnonce}"'
    return f'Digest {fields}, response="{md5(f"{ha1}:{nonce}:{ha2}")}"'


def _probe_http(parts: SplitResult, where: str, timeout: float) -> StreamFailure:
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    kwargs = {"context": _unverified_context()} if parts.scheme == "https" else {}
    conn = connection_type(parts.hostname or "", parts.port, timeout=timeout, **kwargs)  # type: ignore[arg-type]
    headers = {"User-Agent": USER_AGENT}
    creds = credentials(parts)
    if creds is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()  # headers only; the body (a stream) is never read
        status, reason = response.status, response.reason
        content_type = response.getheader("Content-Type", "") or ""
    finally:
        conn.close()
    path = parts.path or "/"
    if status in (401, 403):
        return StreamFailure(StreamError.UNAUTHORIZED, f"{where} answered {status} {reason} for {path}")
    if status in (404, 410):
        return StreamFailure(StreamError.NOT_FOUND, f"{where} has nothing at {path} ({status} {reason})")
    if status >= 300:
        return StreamFailure(StreamError.OTHER, f"{where} answered {status} {reason} for {path}")
    if not content_type.startswith(("video/", "multipart/", "application/octet-stream", "application/vnd.apple")):
        return StreamFailure(StreamError.UNSUPPORTED_CODEC, f"{where}{path} serves {content_type or 'no content type'}"
                                                            ", not a video stream")
    return StreamFailure(StreamError.OTHER, f"{where}{path} serves {content_type} but FFmpeg could not open it")


def _unverified_context() -> ssl.SSLContext:
    # Cameras use self-signed certificates and FFmpeg does not verify them by default; the probe must reach the
    # same server the stream would, so it does not verify either. It only reads a status line and headers.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context

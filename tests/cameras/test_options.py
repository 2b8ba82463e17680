"""Camera options and source URLs are validated at the edge, with messages naming key, value and range."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgebox.cameras import (
    CAMERA_CONFIG_KEYS,
    MAX_URL_LENGTH,
    CameraOptions,
    Roi,
    mask_url,
    parse_camera_options,
    validate_source_url,
)
from edgebox.errors import ErrorCode, InvalidRequest


def test_empty_config_gives_documented_defaults():
    assert parse_camera_options({}) == CameraOptions(
        fps=5.0, roi=None, transport="tcp", watchdog_s=5.0, open_timeout_s=10.0, max_backoff_s=30.0
    )


def test_every_key_parses():
    options = parse_camera_options({"fps": "12.5", "roi": "0.1, 0.2, 0.5, 0.8", "transport": "UDP",
                                    "watchdog_s": "3", "open_timeout_s": "4", "max_backoff_s": "8",
                                    "expected_stream": "640x360@10"})
    assert options == CameraOptions(12.5, Roi(0.1, 0.2, 0.5, 0.8), "udp", 3.0, 4.0, 8.0, (640, 360, 10.0))


def test_config_keys_doc_covers_exactly_the_options():
    assert set(CAMERA_CONFIG_KEYS) == {f.name for f in CameraOptions.__dataclass_fields__.values()}
    assert all(doc and "\n" not in doc for doc in CAMERA_CONFIG_KEYS.values())


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("fps", "0", "0.1..30"),
        ("fps", "30.5", "0.1..30"),
        ("fps", "fast", "0.1..30"),
        ("fps", "nan", "0.1..30"),
        ("watchdog_s", "0.5", "1..120"),
        ("watchdog_s", "121", "1..120"),
        ("open_timeout_s", "61", "1..60"),
        ("max_backoff_s", "31", "1..30"),
        ("max_backoff_s", "inf", "1..30"),
    ],
)
def test_out_of_range_number_names_key_value_and_range(key, value, allowed):
    with pytest.raises(InvalidRequest) as info:
        parse_camera_options({key: value})
    message = info.value.message
    assert key in message and repr(value) in message and allowed in message
    assert info.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("roi", ["0.5,0.5,0.6,0.1", "0,0,0,1", "1,0,0.1,0.1", "-0.1,0,0.5,0.5", "0,0,1", "a,b,c,d",
                                 "0,0.5,1,0.51"])
def test_bad_roi_is_rejected_with_the_rule(roi):
    with pytest.raises(InvalidRequest) as info:
        parse_camera_options({"roi": roi})
    assert "'roi'" in info.value.message and repr(roi) in info.value.message and "x+w<=1" in info.value.message


@pytest.mark.parametrize(("raw", "parsed"), [("640x360@10", (640, 360, 10.0)), (" 1920X1080 @ 29.97 ", (1920, 1080, 29.97)),
                                           ("16x16@0.1", (16, 16, 0.1))])
def test_expected_stream_parses_size_and_rate(raw, parsed):
    assert parse_camera_options({"expected_stream": raw}).expected_stream == parsed


@pytest.mark.parametrize("raw", ["640x360", "640*360@10", "x360@10", "640x360@", "15x360@10", "640x99999@10",
                                 "640x360@0", "640x360@241", "640x360@-5", "9" * 5000 + "x1@1", ""])
def test_bad_expected_stream_is_rejected_with_the_rule(raw):
    with pytest.raises(InvalidRequest, match=r"'expected_stream' = .* is (malformed|out of range); expected "
                                             r"'WIDTHxHEIGHT@FPS'") as refused:
        parse_camera_options({"expected_stream": raw})
    assert len(refused.value.message) < 200  # a huge value is not echoed whole


def test_roi_touching_the_far_edges_is_accepted():
    assert parse_camera_options({"roi": "0.7,0.1,0.3,0.9"}).roi == Roi(0.7, 0.1, 0.3, 0.9)


def test_bad_transport_lists_the_choices():
    with pytest.raises(InvalidRequest, match=r"'transport' = 'http'.*'tcp' or 'udp'"):
        parse_camera_options({"transport": "http"})


def test_unknown_key_lists_known_keys():
    with pytest.raises(InvalidRequest) as info:
        parse_camera_options({"fsp": "5"})
    assert "'fsp'" in info.value.message
    assert all(key in info.value.message for key in CAMERA_CONFIG_KEYS)


@given(st.floats(min_value=0.1, max_value=30.0))
def test_any_fps_in_range_round_trips(fps):
    assert parse_camera_options({"fps": repr(fps)}).fps == fps


@pytest.mark.parametrize("url", ["rtsp://cam.local:554/stream1", "rtsps://u:p@10.0.0.2/live", "http://cam/mjpg",
                                 "https://cam:8443/video.mjpg", "file:///var/video/a.mp4", "/var/video/a b.mp4",
                                 "clips/a.avi", "demo://person", "demo://empty"])
def test_supported_urls_are_accepted(url):
    assert validate_source_url(url) == url


@pytest.mark.parametrize(("url", "needle"), [
    ("ftp://cam/a", "scheme 'ftp' is not supported"),
    ("rtsp:///nohost", "has no host"),
    ("rtsp://cam:99999/x", "invalid port"),
    ("rtsp://cam/a b", "whitespace"),
    ("demo://dog", "demo://person"),
    ("file://otherhost/a.mp4", "file:///absolute/path"),
    ("", "empty"),
    ("rtsp://cam/\x00", "control characters"),
])
def test_unsupported_urls_are_invalid_requests(url, needle):
    with pytest.raises(InvalidRequest, match=needle):
        validate_source_url(url)


def test_url_longer_than_the_limit_is_rejected():
    url = "rtsp://cam/" + "a" * MAX_URL_LENGTH
    with pytest.raises(InvalidRequest, match=str(MAX_URL_LENGTH)):
        validate_source_url(url)


def test_error_message_never_shows_the_password():
    with pytest.raises(InvalidRequest) as info:
        validate_source_url("rtsp://admin:hunter2@cam:99999/x")
    assert "hunter2" not in info.value.message and "admin:***@" in info.value.message


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://admin:hunter2@cam/x", "rtsp://admin:***@cam/x"),
    ("rtsp://admin:p@ss/w@cam:554/x?y=1", "rtsp://admin:***@cam:554/x?y=1"),
    ("rtsp://admin@cam/x", "rtsp://admin@cam/x"),
    ("rtsp://cam/x", "rtsp://cam/x"),
    ("/plain/path", "/plain/path"),
])
def test_mask_url_hides_only_the_password(url, shown):
    assert mask_url(url) == shown

"""h2spec, the HTTP/2 conformance suite (every test of RFC 7540/9113, RFC 7541 and its generic ones, strict mode
included), against the engine's gRPC server class on loopback. Every test must pass but two that need a response
with a body to a plain GET, which a gRPC server does not give; the skipped ones need the same."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.engine import REPO
from tests.support.go_tools import find_go_tool
from tests.support.rtsp import free_port

H2SPEC_TIMEOUT_S = 300
# A gRPC server answers a GET with headers alone (405); these two check that DATA still flows after a frame.
NEED_A_RESPONSE_BODY = {
    "generic/2 Sends a WINDOW_UPDATE frame on half-closed (remote) stream",
    "generic/2 Sends a PRIORITY frame on half-closed (remote) stream",
}


H2SPEC = find_go_tool("h2spec")


@pytest.mark.skipif(H2SPEC is None, reason="h2spec not installed: bash scripts/setup-go.sh builds it")
def test_h2spec_passes_except_what_needs_a_response_body(tmp_path: Path):
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "h2spec_server.py"), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        report = tmp_path / "h2spec.xml"
        run = subprocess.run([H2SPEC, "--strict", "-h", "127.0.0.1", "-p", str(port), "-o", "3",
                              "--junit-report", str(report)],
                             capture_output=True, text=True, timeout=H2SPEC_TIMEOUT_S, check=False)
    finally:
        server.kill()
        log = server.communicate()[0]
    results = {"passed": set(), "failed": set(), "skipped": set()}
    for case in ET.fromstring(xml_safe(report.read_bytes())).iter("testcase"):
        name = f"{case.get('package')} {case.get('classname')}"
        outcome = "failed" if case.find("error") is not None or case.find("failure") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        results[outcome].add(name)
    print(f"h2spec: {len(results['passed'])} passed, {len(results['failed'])} failed, "
          f"{len(results['skipped'])} skipped")
    assert results["failed"] == NEED_A_RESPONSE_BODY, run.stdout[-6000:]
    assert len(results["passed"]) >= 140, run.stdout[-6000:]
    assert "Traceback" not in log, log[-4000:]


def xml_safe(report: bytes) -> bytes:
    """h2spec's JUnit report with what XML 1.0 cannot hold replaced: it copies the bytes a server sent (a GOAWAY's
    debug data, a frame's payload) into its messages as they are, control characters included."""
    text = report.decode("utf-8", "replace")
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "?", text).encode("utf-8")


def test_a_report_with_control_characters_in_a_message_still_parses():
    report = (b'<?xml version="1.0" encoding="UTF-8"?><testsuites><testsuite><testcase package="generic/2" '
              b'classname="x"><failure message="got GOAWAY debug \x01\x02\xff">x</failure></testcase>'
              b'</testsuite></testsuites>')
    with pytest.raises(ET.ParseError):
        ET.fromstring(report)
    case = next(ET.fromstring(xml_safe(report)).iter("testcase"))
    assert case.find("failure").get("message").startswith("got GOAWAY debug ??")

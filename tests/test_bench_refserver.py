"""bench/go/refserver, the grpc-go reference point of bench/grpc_calls.py, builds offline and answers edgebox's proto.

It needs only the Go modules that `bash scripts/setup-go.sh` puts in the module cache (GOPROXY=off here proves it);
the test is skipped only when `go` is not on PATH.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgebox.client import EdgeboxClient
from edgebox.proto_gen import infer as pb

REPO = Path(__file__).resolve().parent.parent
GO = shutil.which("go")
BUILD_TIMEOUT_S = 180.0  # a bound against hangs, not a timing assertion


@pytest.mark.skipif(GO is None, reason="go not on PATH; see scripts/setup-go.sh")
def test_go_reference_server_builds_offline_and_answers_health_and_infer(tmp_path: Path) -> None:
    binary = tmp_path / "refserver"
    env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=readonly -buildvcs=false")
    build = subprocess.run([GO, "build", "-o", str(binary), "./refserver"], cwd=REPO / "bench" / "go", env=env,
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert build.returncode == 0, f"bench/go/refserver did not build offline:\n{build.stderr}"

    proc = subprocess.Popen([str(binary), "-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its address first, or exits
        assert line.startswith("READY 127.0.0.1:"), f"unexpected first line {line!r}"
        port = int(line.split(":")[1])

        async def calls() -> tuple[pb.HealthCheckResponse, pb.InferResult]:
            async with EdgeboxClient("127.0.0.1", port, timeout=30) as client:
                return await client.health(), await client.infer(b"\xff\xd8not-decoded", plugin="motion",
                                                                  source_id="cam-7")

        health, result = asyncio.run(calls())
        assert health.status == pb.HealthStatus.SERVING
        assert health.plugins == ["face", "motion", "person"]
        assert result.camera_id == "cam-7"
        assert result.json_data == '{"detections":[]}'
    finally:
        proc.terminate()
        proc.wait(10)

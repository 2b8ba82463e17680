"""The console's probes, /metrics and JSON API against the real engine and its real hypercorn server."""

from __future__ import annotations

import gc

from prometheus_client.parser import text_string_to_metric_families

from edgebox.node import Lifecycle
from tests.web.engine import open_engine

# Every family /metrics must expose once cameras run (per-camera ones appear with the demo cameras).
EXPECTED_FAMILIES = {
    "edgebox_infer_requests": "counter", "edgebox_infer_failures": "counter",
    "edgebox_infer_latency_seconds": "histogram", "edgebox_batch_size": "histogram",
    "edgebox_queue_depth": "gauge", "edgebox_backend_in_use": "gauge", "edgebox_frames_dropped": "counter",
    "edgebox_camera_frames_in": "counter", "edgebox_camera_frames_inferred": "counter",
    "edgebox_frame_age_seconds": "histogram", "edgebox_camera_reconnects": "counter",
    "edgebox_camera_state": "gauge", "edgebox_camera_fps_in": "gauge", "edgebox_camera_fps_out": "gauge",
    "edgebox_camera_info": "gauge", "edgebox_result_subscribers": "gauge", "edgebox_results": "counter",
    "edgebox_grpc_requests": "counter", "edgebox_cameras_registered": "gauge",
    "process_resident_memory_bytes": "gauge", "edgebox_gc_pause_seconds": "histogram",
    "edgebox_gc_frozen_objects": "gauge",
}


async def test_metrics_exposes_every_family_in_prometheus_text_format(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        for name, kind in EXPECTED_FAMILIES.items():
            assert name in families, f"{name} missing from /metrics"
            assert families[name].type == kind, f"{name} is {families[name].type}, expected {kind}"
        states = {(s.labels["camera"], s.labels["state"]): s.value for s in families["edgebox_camera_state"].samples}
        assert {cam for cam, _ in states} == {"demo-lobby", "demo-corridor"}
        assert sum(v for (cam, _), v in states.items() if cam == "demo-lobby") == 1.0  # exactly one state
        assert "edgebox_gpu_utilization_percent" not in families  # this machine has no NVIDIA GPU


async def test_metrics_and_getmetrics_read_the_same_registry(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        snapshot = (await http.get("/api/metrics")).json()
        text = (await http.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert snapshot["registered_cameras"] == 2
        assert families["edgebox_cameras_registered"].samples[0].value == 2
        assert snapshot["gpu_utilization"] == -1 and snapshot["gpu_memory_used_bytes"] == -1


async def test_engine_freezes_its_long_lived_objects_while_it_runs_and_times_collections(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        families = {f.name: f for f in text_string_to_metric_families((await http.get("/metrics")).text)}
        frozen_at_ready = families["edgebox_gc_frozen_objects"].samples[0].value
        # Frozen objects can still be freed (their count only falls until the next freeze), so the scrape may have
        # seen a few more than are frozen now.
        assert 0 < gc.get_freeze_count() <= frozen_at_ready
        young = {s.name: s.value for s in families["edgebox_gc_pause_seconds"].samples
                 if s.labels.get("generation") == "0"}
        assert young["edgebox_gc_pause_seconds_count"] > 0 and young["edgebox_gc_pause_seconds_sum"] > 0
        await engine.node.deploy_workflow({"workflow_id": "faces", "plugins": ["face"]})  # loads a second model
        assert gc.get_freeze_count() > frozen_at_ready  # frozen again once it loaded
    assert gc.get_freeze_count() == 0  # the engine gives them back when it ends (it may run inside a longer process)


async def test_metrics_offers_openmetrics_when_asked(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        response = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")


async def test_healthz_and_readyz_follow_the_lifecycle(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "SERVING"}
        engine.node.set_lifecycle(Lifecycle.STOPPING)
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json() == {"status": "STOPPING"}
        assert (await http.get("/healthz")).status_code == 200


async def test_remove_unknown_camera_returns_not_found_1001(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        response = await http.delete("/api/cameras/no-such-camera")
        assert response.status_code == 404
        body = response.json()
        assert body["code"] == 1001 and body["name"] == "CAMERA_NOT_FOUND" and "no-such-camera" in body["message"]
        assert (await http.get("/api/cameras/no-such-camera")).json()["code"] == 1001


async def test_add_camera_errors_carry_code_and_http_status(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        duplicate = await http.post("/api/cameras", json={"camera_id": "demo-lobby", "url": "demo://person",
                                                          "workflow_id": "people"})
        assert duplicate.status_code == 409 and duplicate.json()["name"] == "ALREADY_EXISTS"
        no_workflow = await http.post("/api/cameras", json={"camera_id": "cam-x", "url": "demo://person",
                                                            "workflow_id": "nope"})
        assert no_workflow.status_code == 404 and no_workflow.json()["code"] == 1002
        bad_url = await http.post("/api/cameras", json={"camera_id": "cam-x", "url": "gopher://x",
                                                        "workflow_id": "people"})
        assert bad_url.status_code == 400 and bad_url.json()["code"] == 400
        form = await http.post("/api/cameras", data={"camera_id": "cam-x"})  # a form post from anywhere
        assert form.status_code == 400 and "application/json" in form.json()["message"]
        broken = await http.post("/api/cameras", content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and broken.json()["name"] == "INVALID_REQUEST"


async def test_add_list_and_remove_camera_through_the_api(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        added = await http.post("/api/cameras", json={"camera_id": "cam-api", "url": "demo://empty",
                                                      "workflow_id": "people", "config": {"fps": 1}})
        assert added.status_code == 201, added.text
        assert added.json()["camera_id"] == "cam-api" and added.json()["config"] == {"fps": "1"}
        listed = (await http.get("/api/cameras")).json()["cameras"]
        assert [c["camera_id"] for c in listed] == ["cam-api", "demo-corridor", "demo-lobby"]
        assert [c.camera_id for c in engine.node.list_cameras()] == ["cam-api", "demo-corridor", "demo-lobby"]
        removed = await http.delete("/api/cameras/cam-api")
        assert removed.status_code == 200 and removed.json() == {"camera_id": "cam-api"}
        assert "cam-api" not in {c.camera_id for c in engine.node.list_cameras()}


async def test_workflow_deploy_update_and_delete_through_the_api(tmp_path):
    async with open_engine(tmp_path / "data", without_cameras=True) as engine, engine.client() as http:
        spec = {"workflow_id": "faces", "plugins": ["face"], "alarm": {"labels": ["face"]}}
        deployed = await http.post("/api/workflows", json=spec)
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["version"] == 1
        again = await http.post("/api/workflows", json=spec)
        assert again.status_code == 409 and again.json()["name"] == "ALREADY_EXISTS"
        updated = await http.put("/api/workflows/faces", json={**spec, "min_score": 0.7})
        assert updated.status_code == 200 and updated.json()["version"] == 2
        assert updated.json()["spec"]["min_score"] == 0.7
        unknown_plugin = await http.post("/api/workflows", json={"workflow_id": "x", "plugins": ["nope"]})
        assert unknown_plugin.status_code == 422 and unknown_plugin.json()["name"] == "PLUGIN_LOAD_FAILED"
        assert (await http.delete("/api/workflows/faces")).status_code == 200
        missing = await http.delete("/api/workflows/faces")
        assert missing.status_code == 404 and missing.json()["code"] == 1002


async def test_deleting_a_workflow_in_use_is_refused_with_409(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        response = await http.delete("/api/workflows/people")
        assert response.status_code == 409 and response.json()["name"] == "FAILED_PRECONDITION"
        assert "demo-lobby" in response.json()["message"]


async def test_pages_and_static_assets_are_served_with_a_strict_policy(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        for path in ("/", "/alarms", "/workflows", "/cameras/demo-lobby"):
            page = await http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
            assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("style.css", "common.js", "dashboard.js", "camera.js", "workflows.js", "alarms.js",
                      "favicon.svg"):
            assert (await http.get(f"/static/{asset}")).status_code == 200, asset
        assert (await http.get("/api/nothing-here")).status_code == 404

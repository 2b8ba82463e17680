"""The SQLite state store: rows round-trip, a corrupt or foreign file stops the engine (exit 3) without being
touched, and a restarted engine comes back with the cameras and workflows (and versions) it had.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edgebox.client import pb
from edgebox.errors import StoreError
from edgebox.store import SCHEMA_VERSION, STORE_FILENAME, CameraRow, Store, WorkflowRow
from tests.support.engine import (
    EXIT_TIMEOUT_S,
    EngineProcess,
    aio,  # noqa: F401 - fixture
    connect,
    engine_config,
    engine_config_data,
    running_engine,
    write_config,
)

EXIT_STORE = 3


def workflow_row(workflow_id: str = "people", version: int = 1) -> WorkflowRow:
    return WorkflowRow(workflow_id, {"workflow_id": workflow_id, "plugins": ["person"]}, version, 1_700_000_000_000)


def test_first_open_creates_an_empty_store(tmp_path):
    store = Store.open(tmp_path / "new" / "dir")
    try:
        assert store.path == tmp_path / "new" / "dir" / STORE_FILENAME
        assert store.path.is_file()
        assert store.cameras() == [] and store.workflows() == []
    finally:
        store.close()


def test_rows_round_trip_through_a_reopen(tmp_path):
    store = Store.open(tmp_path)
    store.put_workflow(workflow_row("people", 3))
    store.put_camera(CameraRow("lobby", "rtsp://u:p@cam/1", "people", {"fps": "2", "roi": "0,0,1,1"}))
    store.put_camera(CameraRow("door", "demo://empty", "people", {}))
    store.close()

    store = Store.open(tmp_path)
    try:
        assert store.workflows() == [workflow_row("people", 3)]
        assert [c.camera_id for c in store.cameras()] == ["door", "lobby"]
        lobby = store.cameras()[1]
        assert lobby == CameraRow("lobby", "rtsp://u:p@cam/1", "people", {"fps": "2", "roi": "0,0,1,1"})
    finally:
        store.close()


def test_put_replaces_and_delete_removes(tmp_path):
    store = Store.open(tmp_path)
    try:
        store.put_workflow(workflow_row("people", 1))
        store.put_workflow(workflow_row("people", 2))
        assert [w.version for w in store.workflows()] == [2]
        assert store.delete_workflow("people") is True
        assert store.delete_workflow("people") is False
        store.put_camera(CameraRow("c", "demo://empty", "w", {}))
        assert store.delete_camera("c") is True
        assert store.delete_camera("c") is False
        assert store.workflows() == [] and store.cameras() == []
    finally:
        store.close()


def test_data_dir_that_cannot_be_created_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create data directory"):
        Store.open(blocker / "state")


# -- files that are not our store ---------------------------------------------------------------------------------
def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an sqlite database\x00\xff" * 200)


def _truncated(path: Path) -> None:
    store = Store.open(path.parent)
    for i in range(200):
        store.put_camera(CameraRow(f"cam{i}", "demo://empty", "w", {"fps": "1"}))
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()


def _newer(path: Path) -> None:
    Store.open(path.parent).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()


BAD_STORES = {"garbage": (_garbage, "corrupt"), "truncated": (_truncated, "corrupt"),
              "foreign": (_foreign, "not an edgebox store"), "newer": (_newer, "schema version")}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", sorted(BAD_STORES))
def test_bad_store_file_raises_store_error_and_is_left_untouched(tmp_path, kind):
    make, words = BAD_STORES[kind]
    make(tmp_path / STORE_FILENAME)
    before = _files(tmp_path)
    with pytest.raises(StoreError) as info:
        Store.open(tmp_path)
    message = str(info.value)
    assert words in message
    assert str(tmp_path / STORE_FILENAME) in message
    assert "backup" in message  # says what to do
    assert _files(tmp_path) == before


def test_engine_with_a_corrupt_store_exits_3_and_leaves_the_file_as_it_was(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _garbage(data_dir / STORE_FILENAME)
    before = _files(data_dir)
    config = write_config(tmp_path / "engine.json", engine_config_data(data_dir))
    proc = subprocess.run([sys.executable, "-m", "edgebox", "--config", str(config), "--grpc_port", "0"],
                          check=False, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == EXIT_STORE, proc.stderr
    assert "EDGEBOX READY" not in proc.stdout
    assert "corrupt" in proc.stderr and STORE_FILENAME in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _files(data_dir) == before


# -- restart ------------------------------------------------------------------------------------------------------
async def test_restart_restores_workflows_cameras_and_versions(aio, tmp_path):  # noqa: F811 - fixture
    config = write_config(tmp_path / "engine.json", engine_config_data(tmp_path / "data"))

    with EngineProcess(config) as first:
        with connect(aio, first.host, first.port) as client:
            await client.deploy_workflow(pb.WorkflowSpec(workflow_id="people", plugins=["person"]))
            await client.update_workflow(pb.WorkflowSpec(workflow_id="people", plugins=["person"], min_score=0.7))
            await client.deploy_workflow(pb.WorkflowSpec(workflow_id="faces", plugins=["face"]))
            await client.add_camera("lobby", "demo://person", "people", {"fps": "1"})
            await client.add_camera("yard", "rtsp://user:pw@127.0.0.1:9/x", "faces", {"open_timeout_s": "1"})
            await client.remove_camera("yard")
            await client.add_camera("yard", "demo://empty", "faces", {"fps": "1"})
            workflows_before = {w.spec.workflow_id: w for w in await client.list_workflows()}
        first.send_signal()
        assert await first.wait_async() == 0, first.log()

    with EngineProcess(config) as second:
        with connect(aio, second.host, second.port) as client:
            workflows = {w.spec.workflow_id: w for w in await client.list_workflows()}
            cameras = {c.camera_id: c for c in await client.list_cameras()}
            assert sorted(workflows) == ["faces", "people"]
            assert workflows["people"].version == 2
            assert workflows["people"].spec.min_score == pytest.approx(0.7)
            assert workflows["people"].updated_at_ms == workflows_before["people"].updated_at_ms
            assert workflows["faces"].version == 1
            assert workflows["people"].camera_ids == ["lobby"]
            assert sorted(cameras) == ["lobby", "yard"]
            assert cameras["lobby"].rtsp_url == "demo://person"
            assert cameras["lobby"].config == {"fps": "1"}
            assert cameras["yard"].rtsp_url == "demo://empty"
            # The restored workflow really runs, and the next update continues the version count.
            updated = await client.update_workflow(pb.WorkflowSpec(workflow_id="people", plugins=["person"]))
            assert updated.version == 3
            metrics = await client.metrics()
            assert (metrics.workflows, metrics.registered_cameras) == (2, 2)
        second.send_signal()
        assert await second.wait_async() == 0, second.log()


async def test_provisioned_items_are_created_once_and_never_overwritten(aio, tmp_path):  # noqa: F811 - fixture
    provision = {"provision": {
        "workflows": [{"workflow_id": "people", "plugins": ["person"], "min_score": 0.6}],
        "cameras": [{"camera_id": "lobby", "url": "demo://empty", "workflow_id": "people", "config": {"fps": "1"}}],
    }}
    config = engine_config(tmp_path / "data", provision)
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            [workflow] = await client.list_workflows()
            assert (workflow.spec.workflow_id, workflow.version) == ("people", 1)
            assert [c.camera_id for c in await client.list_cameras()] == ["lobby"]
            await client.update_workflow(pb.WorkflowSpec(workflow_id="people", plugins=["person"], min_score=0.9))

    async with running_engine(config) as engine:  # the same data dir: a restart
        with connect(aio, engine.host, engine.port) as client:
            [workflow] = await client.list_workflows()
            assert workflow.version == 2
            assert workflow.spec.min_score == pytest.approx(0.9)  # the user's update, not the config's spec
            assert [c.camera_id for c in await client.list_cameras()] == ["lobby"]

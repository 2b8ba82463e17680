"""Durable state: cameras and workflows in one SQLite file under the data directory.

Each mutation is one transaction (atomic, fsynced in WAL mode), so a crash or SIGKILL never leaves half a
change. This module only stores rows; validation and live objects belong to the registries that call it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebox.errors import StoreError

log = logging.getLogger("edgebox.store")

STORE_FILENAME = "edgebox.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cameras (
    camera_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    options_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class CameraRow:
    camera_id: str
    url: str
    workflow_id: str
    options: dict[str, str]


@dataclass(frozen=True)
class WorkflowRow:
    workflow_id: str
    spec: dict[str, Any]
    version: int
    updated_at_ms: int


class Store:
    """A small synchronous repository; callers run it off the event loop (it fsyncs)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        """Open (or, on first start, create) the store; a corrupt or foreign file raises StoreError."""
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc.strerror}; "
                             "set data_dir in the config to a writable folder") from None
        path = data_dir / STORE_FILENAME
        is_new = not path.exists()
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # Find out what the file is before anything writes to it (journal_mode=WAL rewrites its header).
            problem = conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
            version = _stored_schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                conn.close()
                raise StoreError(f"state store {path} has schema version {version}, newer than this edgebox "
                                 f"understands ({SCHEMA_VERSION}); run the newer edgebox or restore a backup")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if version is None:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO meta VALUES "
                                   f"('schema_version', '{SCHEMA_VERSION}'); COMMIT;")
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise StoreError(
                f"state store {path} is corrupt or not an edgebox store ({exc}). Nothing was changed. "
                f"Restore it from a backup, or move it aside to start with no cameras and workflows."
            ) from None
        if is_new:
            log.warning("no state store at %s: created an empty one (first start)", path)
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            cur = self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return cur.rowcount

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def put_camera(self, row: CameraRow) -> None:
        self._write(
            "INSERT OR REPLACE INTO cameras VALUES (?, ?, ?, ?, ?)",
            (row.camera_id, row.url, row.workflow_id, json.dumps(row.options, sort_keys=True), _now_ms()),
        )

    def delete_camera(self, camera_id: str) -> bool:
        return self._write("DELETE FROM cameras WHERE camera_id = ?", (camera_id,)) > 0

    def cameras(self) -> list[CameraRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT camera_id, url, workflow_id, options_json FROM cameras ORDER BY camera_id").fetchall()
        return [CameraRow(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def put_workflow(self, row: WorkflowRow) -> None:
        self._write(
            "INSERT OR REPLACE INTO workflows VALUES (?, ?, ?, ?)",
            (row.workflow_id, json.dumps(row.spec, sort_keys=True), row.version, row.updated_at_ms),
        )

    def delete_workflow(self, workflow_id: str) -> bool:
        return self._write("DELETE FROM workflows WHERE workflow_id = ?", (workflow_id,)) > 0

    def workflows(self) -> list[WorkflowRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT workflow_id, spec_json, version, updated_at_ms FROM workflows ORDER BY workflow_id"
            ).fetchall()
        return [WorkflowRow(r[0], json.loads(r[1]), r[2], r[3]) for r in rows]


def _stored_schema_version(conn: sqlite3.Connection) -> int | None:
    """The store's schema version; None for an empty database (a new store). Anything else is foreign."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise sqlite3.DatabaseError(f"it has tables {', '.join(sorted(tables))} but no edgebox meta table")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise sqlite3.DatabaseError("its schema_version is missing or not a number")
    return int(row[0])


def _now_ms() -> int:
    return int(time.time() * 1000)

"""Deployed workflows: validated, stored durably, loaded, and swapped atomically on update.

Deploy and update load the new version completely (plugins and models) before anything changes, so a version
that fails to load leaves the running one in place. Cameras look their runtime up per frame; the swap is one
assignment on the trio thread, so each frame sees exactly one version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from edgebox.engine.models import ModelPool
from edgebox.errors import AlreadyExists, EdgeboxError, FailedPrecondition, WorkflowNotFound
from edgebox.plugins_loader import PluginRegistry
from edgebox.store import Store, WorkflowRow
from edgebox.workflows.runtime import WorkflowRuntime
from edgebox.workflows.spec import WorkflowSpec, parse_workflow_spec

log = logging.getLogger("edgebox.workflows")


@dataclass
class WorkflowEntry:
    spec: WorkflowSpec
    version: int
    updated_at_ms: int
    runtime: WorkflowRuntime | None
    # Set when a stored workflow could not be loaded at start (e.g. its plugin broke); cameras report it.
    load_error: EdgeboxError | None = None


class WorkflowRegistry:
    def __init__(self, store: Store, plugins: PluginRegistry, pool: ModelPool,
                 cameras_using: Callable[[str], list[str]]) -> None:
        self._store = store
        self._plugins = plugins
        self._pool = pool
        self._cameras_using = cameras_using
        self._entries: dict[str, WorkflowEntry] = {}
        self._lock = trio.Lock()  # one deploy/update/delete at a time keeps store and memory in step

    def __contains__(self, workflow_id: str) -> bool:
        return workflow_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, workflow_id: str) -> WorkflowEntry:
        entry = self._entries.get(workflow_id)
        if entry is None:
            raise WorkflowNotFound(f"workflow {workflow_id!r} is not deployed; DeployWorkflow it first "
                                   f"(deployed: {', '.join(sorted(self._entries)) or 'none'})")
        return entry

    def entries(self) -> list[WorkflowEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    def runtime(self, workflow_id: str) -> WorkflowRuntime:
        entry = self.get(workflow_id)
        if entry.runtime is None:
            assert entry.load_error is not None
            raise entry.load_error
        return entry.runtime

    async def restore(self) -> None:
        """Load every stored workflow; one that fails stays listed with its error instead of vanishing."""
        rows = await trio.to_thread.run_sync(self._store.workflows)
        for row in rows:
            try:
                spec = parse_workflow_spec(row.spec)
            except EdgeboxError as exc:  # stays in the store, untouched, for an operator to inspect
                log.error("stored workflow %s is not valid for this edgebox version and is not loaded: %s",
                          row.workflow_id, exc.message)
                continue
            try:
                runtime = await WorkflowRuntime.load(spec, row.version, self._plugins, self._pool)
                error = None
            except EdgeboxError as exc:
                runtime, error = None, exc
                log.error("stored workflow %s v%d cannot load: %s", spec.workflow_id, row.version, exc.message)
            self._entries[spec.workflow_id] = WorkflowEntry(spec, row.version, row.updated_at_ms, runtime, error)
        log.info("restored %d workflow(s)", len(rows))

    async def deploy(self, data: Mapping[str, Any]) -> WorkflowEntry:
        spec = parse_workflow_spec(data)
        async with self._lock:
            if spec.workflow_id in self._entries:
                raise AlreadyExists(f"workflow {spec.workflow_id!r} already exists; use UpdateWorkflow to change it")
            return await self._install(spec, 1)

    async def update(self, data: Mapping[str, Any]) -> WorkflowEntry:
        spec = parse_workflow_spec(data)
        async with self._lock:
            old = self.get(spec.workflow_id)
            entry = await self._install(spec, old.version + 1)
            log.info("workflow %s updated to v%d", spec.workflow_id, entry.version)
            return entry

    async def _install(self, spec: WorkflowSpec, version: int) -> WorkflowEntry:
        runtime = await WorkflowRuntime.load(spec, version, self._plugins, self._pool)
        entry = WorkflowEntry(spec, version, int(time.time() * 1000), runtime)
        await trio.to_thread.run_sync(
            self._store.put_workflow, WorkflowRow(spec.workflow_id, spec.to_dict(), version, entry.updated_at_ms))
        self._entries[spec.workflow_id] = entry  # the swap: the next frame of every camera uses this version
        return entry

    async def delete(self, workflow_id: str) -> None:
        async with self._lock:
            self.get(workflow_id)
            users = self._cameras_using(workflow_id)
            if users:
                raise FailedPrecondition(
                    f"workflow {workflow_id!r} is used by camera(s) {', '.join(sorted(users))}; remove those "
                    "cameras (or add them again with another workflow) before deleting it")
            await trio.to_thread.run_sync(self._store.delete_workflow, workflow_id)
            del self._entries[workflow_id]

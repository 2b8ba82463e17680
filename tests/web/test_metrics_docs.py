"""docs/operations.md lists every metric /metrics exposes, and the Grafana dashboard only uses real names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.web.engine import open_engine

DOCS = Path(__file__).resolve().parents[2] / "docs"
GPU_NAMES = {"edgebox_gpu_info", "edgebox_gpu_utilization_percent", "edgebox_gpu_memory_used_bytes",
             "edgebox_gpu_memory_total_bytes"}  # absent on machines without an NVIDIA GPU
SUFFIX = {"counter": "_total", "info": "_info"}


async def _exposed_names(tmp_path: Path) -> set[str]:
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        text = (await http.get("/metrics")).text
    # the text format lists each counter's and histogram's _created timestamps as a family of their own
    return {f.name + SUFFIX.get(f.type, "") for f in text_string_to_metric_families(text)
            if not f.name.endswith("_created")}


def _metrics_section() -> str:
    text = (DOCS / "operations.md").read_text()
    start = text.index("## Metrics")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


async def test_operations_doc_lists_every_exposed_metric(tmp_path):
    exposed = await _exposed_names(tmp_path)
    documented = set(re.findall(r"\| `([a-z_]+)`", _metrics_section()))
    documented |= {n for row in re.findall(r"\| `([a-z_]+)`, `([a-z_]+)`", _metrics_section()) for n in row}
    assert exposed - documented == set(), "metrics missing from docs/operations.md"
    assert documented - exposed - GPU_NAMES == set(), "docs/operations.md lists metrics that do not exist"


async def test_grafana_dashboard_queries_only_existing_metrics(tmp_path):
    exposed = await _exposed_names(tmp_path) | GPU_NAMES
    dashboard = json.loads((DOCS / "grafana" / "edgebox-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = {re.sub(r"_(bucket|sum|count)$", "", name)
            for expr in exprs for name in re.findall(r"\b((?:edgebox|process)_[a-z_]+)", expr)}
    assert used - exposed == set()

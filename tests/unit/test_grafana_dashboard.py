"""deploy/grafana: the dashboard covers what operators watch, every query names series
seekq exports, and every query is valid PromQL (promtool parses them as recording rules)."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_alert_rules import PROMTOOL, exported_names, needs_promtool

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads((GRAFANA / "dashboards" / "seekq.json").read_text())
    assert dashboard["uid"] == "seekq-overview"
    return list(dashboard["panels"])


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_the_dashboard_covers_latency_errors_queues_gpu_and_experts() -> None:
    titles = " | ".join(p["title"] for p in panels())
    for subject in (
        "Job run time P50 / P99 by kind",
        "Gateway errors by route and status",
        "error class",
        "Queue depth",
        "Oldest queued job age",
        "GPU memory",
        "MoE expert activation rate",
    ):
        assert subject in titles, subject
    everything = " ".join(queries())
    assert "histogram_quantile(0.99" in everything and "histogram_quantile(0.5" in everything


def test_every_query_names_exported_series() -> None:
    exported = exported_names()
    # A histogram's queries use _bucket/_sum/_count; a GPU series shows only with a GPU.
    gpu = {
        "seekq_gpu_memory_allocated_bytes",
        "seekq_gpu_memory_reserved_bytes",
        "seekq_gpu_memory_fragmentation_ratio",
        "seekq_gpu_utilization_ratio",
    }
    named = {n for q in queries() for n in re.findall(r"seekq_\w+", q)}
    assert named - gpu <= exported, (named - gpu) - exported
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert all(f"`{n}`" in doc for n in gpu)


def test_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/seekq.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@needs_promtool
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [
                    {"record": f"seekq_panel_{i}", "expr": q} for i, q in enumerate(queries())
                ],
            }
        ]
    }
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", "panels.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries())} rules found" in done.stdout

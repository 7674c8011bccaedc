"""deploy/prometheus: the alert rules name real metrics, and promtool accepts and tests them.

The YAML checks run everywhere; the promtool checks need Debian's `prometheus` package
(.ci/run installs it) and are reported as skipped where it is missing.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.metrics import GenerationMetrics

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)


def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def exported_names() -> set[str]:
    """Sample names a worker's /metrics shows once it has seen some traffic."""
    metrics = GenerationMetrics()
    metrics.observe_experts("tiny", np.ones((2, 4), np.int64), [1, 2])
    metrics.observe_step("tiny", 2)
    metrics.observe_request("tiny", 5, 3, 0.01, "stop")
    text = generate_latest(metrics.registry).decode()
    families = text_string_to_metric_families(text)
    return {sample.name for family in families for sample in family.samples}


def test_expert_activation_rule_has_the_threshold_and_explains_itself() -> None:
    rule = rules()["SeekqExpertActivationLow"]
    assert "seekq_moe_expert_activation_rate < 0.65" in rule["expr"]
    assert rule["for"] == "10m"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook"}
    runbook = rule["annotations"]["runbook"]
    assert all(word in runbook for word in ("router", "traffic mix", "fine-tune"))


def test_every_metric_the_rules_name_is_exported_by_workers() -> None:
    named = {n for rule in rules().values() for n in re.findall(r"seekq_\w+", rule["expr"])}
    assert "seekq_moe_expert_activation_rate" in named
    assert named <= exported_names()


def test_prometheus_config_scrapes_gateway_and_workers_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert [(PROMETHEUS_DIR / name).exists() for name in config["rule_files"]] == [True]
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert any(t.endswith(":8000") for t in targets)
    assert any(t.endswith(":9400") for t in targets)


@needs_promtool
@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
)
def test_promtool_accepts(args: list[str]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr

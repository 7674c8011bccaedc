"""deploy/prometheus: the alert rules name real metrics, and promtool accepts and tests them.

The YAML checks run everywhere; the promtool checks need Debian's `prometheus` package
(.ci/run installs it) and are reported as skipped where it is missing.
"""

import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from api_gateway.metrics import GatewayMetrics
from jobs.lifecycle import Claim
from jobs.queue_depth import QueueDepth, QueuedJobs
from storage.tables import Base, JobRow, TenantRow
from tests.conftest import REDIS_DB_BASE, redis_url
from workers.job_metrics import JobMetrics
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
    """Sample names the gateway's and a worker's /metrics show once they saw some traffic."""
    metrics = GenerationMetrics()
    metrics.observe_experts("tiny", np.ones((2, 4), np.int64), [1, 2])
    metrics.observe_step("tiny", 2)
    metrics.observe_request("tiny", 5, 3, 0.01, "stop")
    jobs = JobMetrics(metrics.registry)
    now = datetime.now(UTC)
    claim = Claim(
        str(uuid.uuid4()), "embed", "t", 1, {"model": "m"}, created_at=now, claimed_at=now
    )
    jobs.observe_end(claim, "failed", "ModelNotFoundError")
    jobs.observe_model_load("tiny", 1.5)
    metrics.observe_finetune_step("tiny", 0.1, 2.5)
    metrics.registry.register(QueueDepth(redis.Redis.from_url(redis_url(REDIS_DB_BASE))))
    gateway = GatewayMetrics()
    gateway.observe("/v1/embeddings", "POST", 503, 0.2)
    gateway.registry.register(QueuedJobs(_one_queued_job()))
    names: set[str] = set()
    for registry in (metrics.registry, gateway.registry):
        families = text_string_to_metric_families(generate_latest(registry).decode())
        names |= {sample.name for family in families for sample in family.samples}
    return names


def _one_queued_job() -> sessionmaker[Session]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        session.add(TenantRow(id="t", name="t"))
        session.flush()
        session.add(
            JobRow(id="j", tenant_id="t", kind="embed", status="queued", actor="a", spec={})
        )
    return sessions


def test_expert_activation_rule_has_the_threshold_and_explains_itself() -> None:
    rule = rules()["SeekqExpertActivationLow"]
    assert "seekq_moe_expert_activation_rate < 0.65" in rule["expr"]
    assert rule["for"] == "10m"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook"}
    runbook = rule["annotations"]["runbook"]
    assert all(word in runbook for word in ("router", "traffic mix", "fine-tune"))


def test_every_metric_the_rules_name_is_exported() -> None:
    named = {n for rule in rules().values() for n in re.findall(r"seekq_\w+", rule["expr"])}
    assert {"seekq_moe_expert_activation_rate", "seekq_queue_oldest_age_seconds"} <= named
    assert named <= exported_names(), named - exported_names()


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

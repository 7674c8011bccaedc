"""`seekq flower` against the session's real worker: authentication required everywhere,
the worker named by device and queues, a finished task whose only argument is its job id
(nothing the job was given), and a real headless Chromium that logs in, sees both, and
saves screenshots (to $SEEKQ_SCREENSHOT_DIR when set, e.g. docs/images)."""

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, chrome_driver, free_port, stack_env

USER, PASSWORD = "ops", "flower-" + "p" * 16
SECRET_TEXT = "card 4111 1111 1111 1111 for jane@example.com"


@dataclass
class Flower:
    url: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, auth: bool = True) -> httpx.Response:
        credentials = (USER, PASSWORD) if auth else None
        return httpx.get(self.url + path, auth=credentials, timeout=10)


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[Flower]:
    port = free_port()
    env = stack_env(
        stack.database_url,
        stack.redis_db,
        stack.tmp / "flower",
        SEEKQ_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}",
        SEEKQ_FLOWER_PORT=str(port),
    )
    (stack.tmp / "flower").mkdir(exist_ok=True)
    log = (stack.tmp / "flower.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "seekq", "flower"], env=env, stdout=log, stderr=log
    )
    running = Flower(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 30
    while True:
        try:
            if running.get("/healthcheck", auth=True).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (stack.tmp / "flower.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "flower did not start"
        time.sleep(0.2)
    yield running
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def finished_job(stack: Stack, flower: Flower) -> str:
    """A ping job run by the session's worker while Flower watches."""
    with stack.client() as client:
        job = client.submit("ping", {"payload": SECRET_TEXT})
        done = client.wait(job["id"], timeout_s=60)
    assert done["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while not _task_of(flower, job["id"]):
        assert time.monotonic() < deadline, "flower never saw the task"
        time.sleep(0.3)
    return str(job["id"])


def _task_of(flower: Flower, job_id: str) -> dict[str, Any] | None:
    tasks = flower.get("/api/tasks").json()
    found = [t for t in tasks.values() if job_id in str(t.get("args"))]
    return found[0] if found and found[0].get("state") == "SUCCESS" else None


@pytest.mark.parametrize("path", ["/", "/workers", "/tasks", "/api/tasks", "/api/workers"])
def test_every_page_needs_the_password(flower: Flower, path: str) -> None:
    assert flower.get(path, auth=False).status_code == 401
    wrong = httpx.get(flower.url + path, auth=(USER, "wrong-password!"), timeout=10)
    assert wrong.status_code == 401


def test_a_task_shows_its_job_id_and_nothing_else(flower: Flower, finished_job: str) -> None:
    task = _task_of(flower, finished_job)
    assert task is not None
    assert task["args"] == f"['{finished_job}']" and task["kwargs"] == "{}"
    assert task["result"] == "'succeeded'"
    everything = json.dumps(flower.get("/api/tasks").json())
    for fragment in ("4111", "jane@example.com", "card "):
        assert fragment not in everything


def test_the_worker_is_named_by_device_and_queues(flower: Flower, finished_job: str) -> None:
    host = socket.gethostname()
    deadline = time.monotonic() + 30
    workers: dict[str, Any] = {}
    while time.monotonic() < deadline:
        workers = flower.get("/api/workers?refresh=1").json()
        if f"seekq-cpu-gpu.embed+cpu.ping@{host}" in workers:
            return
        time.sleep(0.5)
    raise AssertionError(sorted(workers))


def test_a_browser_logs_in_and_sees_the_worker_and_the_task(
    flower: Flower, finished_job: str, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("SEEKQ_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    driver = chrome_driver()
    try:
        driver.get(flower.url + "/workers")
        assert "seekq-cpu-" not in driver.page_source  # no credentials: nothing shown
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )
        driver.get(flower.url + "/workers")
        _wait_for(driver, "seekq-cpu-gpu.embed+cpu.ping@")
        driver.save_screenshot(str(shots / "flower-workers.png"))
        driver.get(flower.url + f"/task/{_task_id(flower, finished_job)}")
        _wait_for(driver, finished_job)
        assert "SUCCESS" in driver.page_source and "4111" not in driver.page_source
        driver.save_screenshot(str(shots / "flower-task.png"))
    finally:
        driver.quit()
    assert (shots / "flower-workers.png").stat().st_size > 10_000


def _task_id(flower: Flower, job_id: str) -> str:
    tasks = flower.get("/api/tasks").json()
    return next(uuid for uuid, t in tasks.items() if job_id in str(t.get("args")))


def _wait_for(driver: Any, text: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in driver.page_source:
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.3)

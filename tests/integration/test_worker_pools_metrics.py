"""Worker metrics on the solo pool (served by the worker process) and the prefork pool
(children write to prometheus_client's multiprocess files, the parent serves their sum):
both count every job the worker ran."""

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    Stack,
    WorkerProcess,
    flush_redis,
    free_port,
    make_context,
    stack_env,
    unique,
)

JOBS = 6


def succeeded(url: str) -> float:
    text = httpx.get(url, timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "seekq_jobs_total" and labels.get("kind") == "ping":
                total += sample.value if labels.get("outcome") == "succeeded" else 0
    return total


@pytest.mark.parametrize(("pool", "slots"), [("solo", "1"), ("prefork", "2")])
def test_a_pool_counts_every_job(stack: Stack, pool: str, slots: str) -> None:
    db = stack.redis_db + 4  # its own broker (+2, +3: the quiet contexts of both stacks)
    flush_redis(db)
    port = free_port()
    env = stack_env(stack.database_url, db, stack.tmp, SEEKQ_METRICS_PORT=str(port))
    args = ("--pool", pool, "--concurrency", slots)
    worker = WorkerProcess(env, stack.tmp / f"{pool}-metrics.log", "cpu.ping", args).start()
    context = make_context(stack.database_url, db, stack.tmp)
    try:
        who = context.keys.authenticate(context.keys.create(unique("pool")).secret)
        ids = [context.service.submit(who, "ping", {"payload": str(i)}).job.id for i in range(JOBS)]
        deadline = time.monotonic() + 60
        while any(context.service.get(who, i).status != "succeeded" for i in ids):
            assert time.monotonic() < deadline, worker.log()[-2000:]
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 10
        while succeeded(url) < JOBS:  # the last write may land just after the status
            assert time.monotonic() < deadline, httpx.get(url).text[-2000:]
            time.sleep(0.2)
        assert succeeded(url) == JOBS
        assert "seekq_queue_depth" in httpx.get(url).text
    finally:
        context.close()
        worker.stop()

"""At-least-once delivery, exactly-once effect; no raw PII anywhere it must not be."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from sqlalchemy import text

from jobs.catalog import CATALOG, JobKind
from jobs.context import JobsContext
from tests.conftest import Stack, WorkerProcess, redis_url, stack_env

CARD_SPACED = "4111 1111 1111 1111"
CARD = "4111111111111111"
EMAIL = "jane.doe@example.com"
PII_TEXT = f"Charge my card {CARD_SPACED} and mail the receipt to {EMAIL} please"
RAW_VALUES = [CARD_SPACED, CARD, EMAIL, "1111 1111 1111"]


def job_row(stack_or_context: Stack | JobsContext, job_id: str) -> dict[str, object]:
    context = stack_or_context.context if isinstance(stack_or_context, Stack) else stack_or_context
    with context.engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id})
        return dict(row.mappings().one())


def test_redelivered_message_does_not_rerun_a_finished_job(stack: Stack) -> None:
    with stack.client() as client:
        job = client.wait(client.submit("embed", {"input": ["run me once"]})["id"], timeout_s=60)
        assert job["status"] == "succeeded"
        before = job_row(stack, job["id"])
        entry = CATALOG[JobKind.EMBED]
        stack.context.celery.send_task(entry.task_name, args=[job["id"]], queue=entry.queue)
        # The worker is solo with prefetch 1: once a later job on the same queue is done,
        # the duplicate has been handled.
        later = client.wait(client.submit("embed", {"input": ["after"]})["id"], timeout_s=60)
    assert later["status"] == "succeeded"
    assert job_row(stack, job["id"]) == before
    assert f"message ignored job_id={job['id']}" in stack.worker.log()


def test_message_for_unknown_job_is_dropped(stack: Stack) -> None:
    entry = CATALOG[JobKind.PING]
    ghost = "00000000-0000-4000-8000-000000000000"
    stack.context.celery.send_task(entry.task_name, args=[ghost], queue=entry.queue)
    with stack.client() as client:
        client.wait(client.submit("ping", {"payload": "after"})["id"], timeout_s=30)
    assert f"unknown job dropped job_id={ghost}" in stack.worker.log()


def wait_for_status(context: JobsContext, job_id: str, status: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while job_row(context, job_id)["status"] != status:
        assert time.monotonic() < deadline, f"job never became {status}"
        time.sleep(0.05)


def test_kill_9_mid_job_then_restart_completes_exactly_once(
    stack: Stack, quiet_context: JobsContext
) -> None:
    env = stack_env(
        stack.database_url,
        stack.redis_db + 2,
        stack.tmp,
        SEEKQ_LEASE_S="2",
        SEEKQ_VISIBILITY_TIMEOUT_S="3",
    )
    texts = [f"document {i}: " + "words about queues and workers " * 40 for i in range(250)]
    who = quiet_context.keys.authenticate(quiet_context.keys.create("crash").secret)
    first = WorkerProcess(env, stack.tmp / "crash-worker.log", queues="gpu.embed").start()
    try:
        job = quiet_context.service.submit(who, "embed", {"input": texts}).job
        wait_for_status(quiet_context, job.id, "running", 30)
        time.sleep(0.5)
        first.kill9()
    finally:
        first.stop()
    assert job_row(quiet_context, job.id)["status"] == "running"
    second = WorkerProcess(env, stack.tmp / "crash-worker.log", queues="gpu.embed").start()
    try:
        done = quiet_context.service.wait(who, job.id, timeout_s=120)
    finally:
        second.stop()
    assert done.status == "succeeded", done
    assert done.attempts == 2
    assert done.result is not None and len(done.result["vectors_base64"]) == len(texts)
    log = second.log()
    assert log.count(f"job started job_id={job.id}") == 2  # attempt 1 (killed), attempt 2
    assert f"job_id={job.id} kind=embed attempt=2" in log


@contextmanager
def redis_monitor() -> Iterator[list[str]]:
    """Every command any client sends to Redis while the block runs (MONITOR)."""
    seen: list[str] = []
    client = redis.Redis.from_url(redis_url(0))
    stop = threading.Event()

    def run() -> None:
        with client.monitor() as monitor:
            for command in monitor.listen():
                seen.append(str(command.get("command", "")))
                if stop.is_set():
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.2)
    yield seen
    stop.set()
    client.ping()  # wakes the monitor so it sees `stop`
    redis.Redis.from_url(redis_url(0)).ping()
    thread.join(timeout=5)


def dump_redis(db: int) -> str:
    client = redis.Redis.from_url(redis_url(db))
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(repr(key))
        parts.append(repr(client.dump(key)))
        kind = client.type(key)
        if kind == b"list":
            parts.append(repr(client.lrange(key, 0, -1)))
        elif kind == b"hash":
            parts.append(repr(client.hgetall(key)))
        elif kind == b"zset":
            parts.append(repr(client.zrange(key, 0, -1)))
        elif kind == b"set":
            parts.append(repr(client.smembers(key)))
    return "\n".join(parts)


def dump_sql(stack: Stack) -> str:
    with stack.context.engine.connect() as connection:
        return "\n".join(
            repr(list(connection.execute(text(f"SELECT * FROM {table}"))))
            for table in ("tenants", "api_keys", "jobs", "audit_events")
        )


def test_raw_pii_reaches_no_redis_sql_or_log(stack: Stack, test_log) -> None:  # type: ignore[no-untyped-def]
    import openai

    with redis_monitor() as commands, stack.client("pii-tenant") as client:
        job = client.submit("embed", {"input": [PII_TEXT, "no pii here"]})
        done = client.wait(job["id"], timeout_s=60)
        sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key("pii-tenant"))
        sdk.embeddings.create(model="all-MiniLM-L6-v2", input=PII_TEXT)
        audit = client.audit(limit=10)
    assert done["status"] == "succeeded"
    assert commands, "MONITOR saw nothing: the check would be empty"
    assert any(job["id"] in c for c in commands), "the job id itself should cross Redis"
    masked = done["spec"]["input"][0]
    assert "[CARD_NUMBER:" in masked and "[EMAIL:" in masked and masked.endswith("please")
    counts = audit["data"][0]["entity_counts"]
    assert counts.get("CARD_NUMBER") == 1 and counts.get("EMAIL") == 1
    time.sleep(0.5)  # let the worker flush its log
    places = {
        "redis traffic": "\n".join(commands),
        "redis contents": dump_redis(stack.redis_db),
        "sql": dump_sql(stack),
        "worker log": stack.worker.log(),
        "test-process log": test_log.read_text(errors="replace"),
        "api response": repr(done) + repr(audit),
    }
    for where, content in places.items():
        assert content, f"{where} is empty: the check would prove nothing"
        for raw in RAW_VALUES:
            assert raw not in content, f"raw PII {raw!r} found in {where}"


def test_cancel_queued_and_running_jobs(stack: Stack, quiet_context: JobsContext) -> None:
    env = stack_env(
        stack.database_url, stack.redis_db + 2, stack.tmp, SEEKQ_EMBED_BATCH_TOKENS="2048"
    )
    who = quiet_context.keys.authenticate(quiet_context.keys.create("canceller").secret)
    # No worker yet: the job waits in the queue and is cancelled there.
    queued = quiet_context.service.submit(who, "embed", {"input": ["never run"]}).job
    assert quiet_context.service.cancel(who, queued.id).status == "cancelled"
    texts = [f"text {i}: " + "a long sentence about cancellation " * 30 for i in range(600)]
    worker = WorkerProcess(env, stack.tmp / "cancel-worker.log", queues="gpu.embed").start()
    try:
        job = quiet_context.service.submit(who, "embed", {"input": texts}).job
        wait_for_status(quiet_context, job.id, "running", 60)
        assert quiet_context.service.cancel(who, job.id).status == "cancelling"
        done = quiet_context.service.wait(who, job.id, timeout_s=60)
        after = quiet_context.service.submit(who, "embed", {"input": ["still serving"]}).job
        served = quiet_context.service.wait(who, after.id, timeout_s=60)
    finally:
        worker.stop()
    assert done.status == "cancelled" and done.result is None
    assert done.cancel_requested_at is not None and done.finished_at is not None
    assert served.status == "succeeded"
    log = worker.log()
    assert f"message ignored job_id={queued.id}" in log
    assert f"job cancelled mid-run job_id={job.id}" in log

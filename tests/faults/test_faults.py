"""Fault injection: real processes broken on purpose, and one checker over the history.

Each scenario runs against the module's fault stack (its own redis-server, PostgreSQL
through a TCP proxy, a real gateway, real `seekq worker` processes), under a tenant of
its own, then asserts with `settle`: every accepted job reached a terminal status with
exactly one committed effect matching it, no job ran that no client was told about,
and a new job succeeds once the fault has healed. docs/reliability.md tabulates them.
"""

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest
import redis
from sqlalchemy import create_engine, text

from jobs.catalog import CATALOG, JobKind
from jobs.dispatch import EPOCH_KEY
from tests.faults.conftest import FaultStack, report
from tests.faults.harness import Checker, History, timed

pytestmark = pytest.mark.timeout(300)

SETTLE_S = 90


def submit(
    client: httpx.Client,
    history: History,
    payload: str,
    hold_s: float = 0.0,
    key: str | None = None,
) -> dict[str, Any] | None:
    """POST /v1/jobs: 2xx is recorded as accepted; 503 as refused; anything else fails."""
    body = {"kind": "ping", "spec": {"payload": payload, "hold_s": hold_s}}
    headers = {"Idempotency-Key": key} if key else {}
    try:
        response = client.post("/v1/jobs", json=body, headers=headers)
    except httpx.TimeoutException:
        history.refused += 1  # the client gave up; the job may exist: the checker allows none
        return None
    if response.status_code in (200, 202):
        job: dict[str, Any] = response.json()
        history.accept(job, payload)
        return job
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after")
    history.refused += 1
    return None


def settle(stack: FaultStack, scenario: str, client: httpx.Client, checker: Checker,
           history: History, expect: dict[str, int] | None = None) -> None:  # fmt: skip
    """Wait for the history to end, hold it to the checker's rules, then show a new job
    succeeds on the healed system."""
    with timed() as took:
        checker.wait_terminal(list(history.accepted), SETTLE_S)
    healed = submit(client, history, f"{scenario}: after")
    assert healed is not None, "the healed system refused a new job"
    checker.wait_terminal([healed["id"]], SETTLE_S)
    verdict = checker.verdict(history)
    report(scenario, f"{verdict.row()}; settled in {took[0]:.1f} s; refused {history.refused}")
    assert verdict.problems == [], verdict.problems
    assert checker.statuses([healed["id"]])[healed["id"]] == "succeeded"
    if expect is not None:
        assert verdict.statuses == expect, verdict.statuses
    client.close()
    checker.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def job_row(stack: FaultStack, job_id: str) -> dict[str, Any]:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            query = text("SELECT status, attempt, worker FROM jobs WHERE id = :id")
            return dict(connection.execute(query, {"id": job_id}).mappings().one())
    finally:
        engine.dispose()


def running(stack: FaultStack, job_id: str, attempt: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        row = job_row(stack, job_id)
        return bool(row["status"] == "running" and row["attempt"] >= attempt)

    return check


@pytest.fixture
def worker(fault_stack: FaultStack):  # type: ignore[no-untyped-def]
    started = fault_stack.start_worker("solo")
    yield started
    fault_stack.stop_workers()


def test_worker_killed_mid_job(fault_stack: FaultStack) -> None:
    client, checker, history = fault_stack.tenant("kill-worker")
    first = fault_stack.start_worker("kill")
    jobs = [submit(client, history, f"kill {i}", hold_s=1.5) for i in range(3)]
    assert all(jobs)
    wait_until(running(fault_stack, jobs[0]["id"]), what="the first job to run")  # type: ignore[index]
    first.kill9()
    fault_stack.start_worker("kill-2")
    try:
        settle(fault_stack, "kill -9 of the whole worker mid-job", client, checker, history,
               {"succeeded": 4})  # fmt: skip
        assert job_row(fault_stack, jobs[0]["id"])["attempt"] == 2  # type: ignore[index]
    finally:
        fault_stack.stop_workers()


def test_worker_child_killed_mid_job(fault_stack: FaultStack) -> None:
    client, checker, history = fault_stack.tenant("kill-child")
    fault_stack.start_worker("prefork", "--pool", "prefork", "--concurrency", "2")
    try:
        job = submit(client, history, "child", hold_s=2)
        assert job is not None
        wait_until(running(fault_stack, job["id"]), what="the job to run")
        kill_children(fault_stack.workers[0])  # SIGKILL: what the kernel's OOM killer sends
        more = [submit(client, history, f"child {i}") for i in range(3)]
        assert all(more)
        settle(fault_stack, "kill -9 of a prefork child mid-job", client, checker, history,
               {"succeeded": 5})  # fmt: skip
    finally:
        fault_stack.stop_workers()


def test_a_job_that_kills_every_worker_ends_worker_lost(fault_stack: FaultStack) -> None:
    client, checker, history = fault_stack.tenant("poison-job")
    fault_stack.start_worker("oom", "--pool", "prefork", "--concurrency", "1")
    try:
        job = submit(client, history, "killer", hold_s=30)
        assert job is not None
        for attempt in (1, 2, 3):  # SEEKQ_MAX_ATTEMPTS=3
            wait_until(running(fault_stack, job["id"], attempt), 60, f"attempt {attempt}")
            kill_children(fault_stack.workers[0])
        checker.wait_terminal([job["id"]], SETTLE_S)
        row = job_row(fault_stack, job["id"])
        assert (row["status"], row["attempt"]) == ("failed", 3)
        assert error_of(fault_stack, job["id"])[0] == "worker_lost"
        settle(fault_stack, "a job that kills its worker every time (OOM)", client, checker,
               history, {"failed": 1, "succeeded": 1})  # fmt: skip
    finally:
        fault_stack.stop_workers()


def kill_children(worker: Any) -> None:
    """SIGKILL every pool child of a prefork worker (the one running the job among them)."""
    children = psutil.Process(worker.process.pid).children()
    assert children
    for child in children:
        os.kill(child.pid, signal.SIGKILL)


def epoch(stack: FaultStack) -> bytes | None:
    value: bytes | None = stack.redis.client().get(EPOCH_KEY)
    return value


def restart_redis(stack: FaultStack, persistent: bool, kill: bool) -> None:
    stack.redis.stop(kill=kill)
    time.sleep(1)
    stack.redis.persistent = persistent
    stack.redis.start()


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
def test_redis_restart_with_jobs_queued_and_running(
    fault_stack: FaultStack, worker: Any, persistent: bool
) -> None:
    restart_redis(fault_stack, persistent, kill=False)  # the mode under test
    client, checker, history = fault_stack.tenant(f"redis-restart-{int(persistent)}")
    jobs = [submit(client, history, f"restart {i}", hold_s=0.5) for i in range(8)]
    assert all(jobs)
    wait_until(running(fault_stack, jobs[0]["id"]), what="a job to run")  # type: ignore[index]
    wait_until(lambda: epoch(fault_stack) is not None, what="the reconciler's first sweep")
    before = epoch(fault_stack)
    restart_redis(fault_stack, persistent, kill=True)
    # The sweep notices a broker that lost its data by its epoch key: kept with AOF (no
    # re-publish), gone without persistence (every queued job published again).
    wait_until(lambda: epoch(fault_stack) is not None, what="the sweep after the restart")
    assert (epoch(fault_stack) == before) is persistent
    name = "with AOF (appendfsync always)" if persistent else "without persistence"
    try:
        settle(fault_stack, f"Redis kill -9 and restart {name}, jobs queued and running",
               client, checker, history, {"succeeded": 9})  # fmt: skip
    finally:
        restart_redis(fault_stack, True, kill=False)


def test_redis_down_at_submit(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("redis-down")
    fault_stack.redis.stop()
    try:
        queued = [submit(client, history, f"outage {i}") for i in range(3)]
        assert all(queued), "async submits are accepted into the outbox"
        body = {"model": "all-MiniLM-L6-v2", "input": ["needs an answer now"]}
        waited = client.post("/v1/embeddings", json=body)
        assert waited.status_code == 503, waited.text
        assert waited.json()["error"]["code"] == "broker_unavailable"
        assert waited.headers["retry-after"]
    finally:
        fault_stack.redis.start()
    settle(fault_stack, "Redis down at submit (async accepted, sync 503)", client, checker,
           history, {"succeeded": 4})  # fmt: skip


def test_redis_stalled(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("redis-stalled")
    fault_stack.redis.client().execute_command("CLIENT", "PAUSE", "3000", "ALL")
    jobs = [submit(client, history, f"stalled {i}") for i in range(3)]
    assert any(jobs)
    settle(fault_stack, "Redis stalled 3 s (CLIENT PAUSE ALL)", client, checker, history)


def test_connections_reset_mid_task(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("reset")
    jobs = [submit(client, history, f"reset {i}", hold_s=1) for i in range(3)]
    assert all(jobs)
    wait_until(running(fault_stack, jobs[0]["id"]), what="a job to run")  # type: ignore[index]
    fault_stack.redis_proxy.reset()
    fault_stack.pg_proxy.reset()
    time.sleep(0.5)
    fault_stack.redis_proxy.reset()
    settle(fault_stack, "TCP resets of every Redis and PostgreSQL connection mid-task",
           client, checker, history, {"succeeded": 4})  # fmt: skip


def test_postgres_down_mid_job(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("pg-down")
    job = submit(client, history, "pg down", hold_s=1)
    assert job is not None
    wait_until(running(fault_stack, job["id"]), what="the job to run")
    fault_stack.pg_proxy.mode = "refuse"
    fault_stack.pg_proxy.reset()
    try:
        refused = client.post("/v1/jobs", json={"kind": "ping", "spec": {"payload": "x"}})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        time.sleep(4)  # the job ends while its result cannot be written
    finally:
        fault_stack.pg_proxy.mode = "pass"
    settle(fault_stack, "PostgreSQL down 4 s mid-job (connections refused)", client, checker,
           history, {"succeeded": 2})  # fmt: skip


def test_postgres_restarted(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("pg-restart")
    jobs = [submit(client, history, f"pg restart {i}", hold_s=0.5) for i in range(3)]
    assert all(jobs)
    wait_until(running(fault_stack, jobs[0]["id"]), what="a job to run")  # type: ignore[index]
    terminate_backends(fault_stack)  # what a PostgreSQL restart does to its clients
    settle(fault_stack, "PostgreSQL backends terminated (a restart) mid-task", client,
           checker, history, {"succeeded": 4})  # fmt: skip


def terminate_backends(stack: FaultStack) -> None:
    engine = create_engine(stack.database_url)
    name = stack.database_url.rsplit("/", 1)[1]
    query = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = :name AND pid <> pg_backend_pid()"
    )
    with engine.connect() as connection:
        assert connection.execute(query, {"name": name}).scalar_one() > 0
    engine.dispose()


def test_postgres_locked(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("pg-locked")
    engine = create_engine(fault_stack.database_url)
    with engine.connect() as connection:
        connection.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        threads = [
            threading.Thread(target=submit, args=(client, history, f"locked {i}")) for i in range(3)
        ]
        for thread in threads:
            thread.start()
        time.sleep(3)
        connection.rollback()
    for thread in threads:
        thread.join(timeout=30)
    engine.dispose()
    settle(fault_stack, "PostgreSQL jobs table locked 3 s during submits", client, checker,
           history, {"succeeded": 4})  # fmt: skip


def test_job_longer_than_the_visibility_timeout(fault_stack: FaultStack) -> None:
    client, checker, history = fault_stack.tenant("visibility")
    for name in ("vis-a", "vis-b"):
        fault_stack.start_worker(name, SEEKQ_VISIBILITY_TIMEOUT_S="2")
    try:
        job = submit(client, history, "long", hold_s=8)
        assert job is not None
        settle(fault_stack, "a job 4x longer than the visibility timeout, two workers",
               client, checker, history, {"succeeded": 2})  # fmt: skip
        assert job_row(fault_stack, job["id"])["attempt"] == 1  # never taken over
    finally:
        fault_stack.stop_workers()


def test_duplicate_delivery(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("duplicates")
    job = submit(client, history, "once", hold_s=0.5)
    assert job is not None
    entry = CATALOG[JobKind.PING]
    for _ in range(3):
        fault_stack.context.celery.send_task(entry.task_name, args=[job["id"]], queue=entry.queue)
    settle(fault_stack, "the same message delivered 4 times", client, checker, history,
           {"succeeded": 2})  # fmt: skip


def test_duplicate_submit_with_one_idempotency_key(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("idempotent")
    ids: list[str] = []

    def one() -> None:
        job = submit(client, history, "same", key="order-42")
        if job is not None:
            ids.append(job["id"])

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(ids) == 8 and len(set(ids)) == 1, ids
    settle(fault_stack, "8 concurrent submits with one idempotency key", client, checker,
           history, {"succeeded": 2})  # fmt: skip


def test_poison_messages(fault_stack: FaultStack, worker: Any) -> None:
    client, checker, history = fault_stack.tenant("poison")
    pid = worker.process.pid
    broker = redis.Redis(port=fault_stack.redis.port)
    broker.lpush("cpu.ping", b"\x80\x04not json at all", b"{}", b'{"body": "!!"}')
    celery, entry = fault_stack.context.celery, CATALOG[JobKind.PING]
    for args in ([], [123], ["../../etc/passwd"], ["x" * 10_000], [None, None]):
        celery.send_task(entry.task_name, args=args, queue=entry.queue)
    celery.send_task("seekq.no_such_task", args=["x"], queue=entry.queue)
    settle(fault_stack, "poison messages (not JSON, bad args, unknown task)", client,
           checker, history, {"succeeded": 1})  # fmt: skip
    assert psutil.pid_exists(pid) and worker.process.poll() is None
    log = worker.log_since_start()
    assert log.count("poison message dropped") == 3
    assert log.count("malformed message dropped") == 3  # 123, a path, 10 KB of "x"


def test_cancel_then_worker_restart(fault_stack: FaultStack) -> None:
    client, checker, history = fault_stack.tenant("cancel-restart")
    first = fault_stack.start_worker("cancel")
    try:
        job = submit(client, history, "cancel me", hold_s=20)
        assert job is not None
        wait_until(running(fault_stack, job["id"]), what="the job to run")
        first.process.send_signal(signal.SIGSTOP)  # frozen: it cannot see the cancel
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        first.kill9()
        fault_stack.start_worker("cancel-2")
        settle(fault_stack, "cancel of a running job, then its worker killed and restarted",
               client, checker, history, {"cancelled": 1, "succeeded": 1})  # fmt: skip
    finally:
        fault_stack.stop_workers()


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_soft_and_hard_time_limits(fault_stack: FaultStack, pool: str) -> None:
    """Celery's own limits do not work on solo/threads pools (GPU workers): seekq's do.
    Soft (90%): the job is asked to stop and fails. Hard (100%): a job that did not stop
    is failed anyway and the worker process exits for its supervisor to restart."""
    client, checker, history = fault_stack.tenant(f"limits-{pool}")
    limits = {"SEEKQ_TIME_LIMITS_S": '{"ping": 3}'}
    first = fault_stack.start_worker(f"limits-{pool}", "--pool", pool, **limits)
    try:
        soft = submit(client, history, "soft", hold_s=20)
        assert soft is not None
        checker.wait_terminal([soft["id"]], 30)
        body = {"kind": "ping", "spec": {"payload": "hard", "hold_s": 20, "ignore_stop": True}}
        hard = client.post("/v1/jobs", json=body).json()
        history.accept(hard, "hard")
        assert first.process is not None and first.process.wait(timeout=30) == 75
        fault_stack.start_worker(f"limits-{pool}-2", "--pool", pool, **limits)
        errors = {job_id: error_of(fault_stack, job_id) for job_id in (soft["id"], hard["id"])}
        assert errors[soft["id"]] == ("TimeLimitExceededError", "soft time limit of 2.7 s")
        assert errors[hard["id"]][0] == "TimeLimitExceededError"
        assert errors[hard["id"]][1].startswith("hard time limit of 3 s")
        settle(fault_stack, f"soft and hard time limits on the {pool} pool", client, checker,
               history, {"failed": 2, "succeeded": 1})  # fmt: skip
    finally:
        fault_stack.stop_workers()


def error_of(stack: FaultStack, job_id: str) -> tuple[str, str]:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            query = text("SELECT error_type, error_message FROM jobs WHERE id = :id")
            error_type, message = connection.execute(query, {"id": job_id}).one()
            return error_type, message
    finally:
        engine.dispose()


def test_half_open_redis_connections(fault_stack: FaultStack) -> None:
    """Every open Redis connection silently stops (no byte and no reset ever arrives; the
    peer's kernel still ACKs: a hung proxy or server) while jobs run; new connections
    work. The gateway's publishes time out (SEEKQ_BROKER_SOCKET_TIMEOUT_S) and its jobs
    wait in the outbox. The worker's Celery consumer does NOT notice its hung connection
    (measured: still polling it after 3 minutes), so it is restarted, as a supervisor's
    liveness check would; the restarted worker finishes everything exactly once."""
    client, checker, history = fault_stack.tenant("half-open")
    fault_stack.start_worker("half-open")
    try:
        jobs = [submit(client, history, f"half-open {i}", hold_s=1) for i in range(3)]
        assert all(jobs)
        wait_until(running(fault_stack, jobs[0]["id"]), what="a job to run")  # type: ignore[index]
        fault_stack.redis_proxy.sever()
        with timed() as took:
            late = [submit(client, history, f"half-open late {i}") for i in range(2)]
        assert all(late), "accepted into the outbox while Redis hangs"
        assert took[0] < 30, took
        fault_stack.stop_workers()
        fault_stack.start_worker("half-open-2")
        settle(fault_stack, "half-open Redis connections mid-task, worker restarted", client,
               checker, history, {"succeeded": 6})  # fmt: skip
    finally:
        fault_stack.stop_workers()


@pytest.fixture
def small_disk(fault_stack: FaultStack):  # type: ignore[no-untyped-def]
    """A 16 MiB tmpfs for an index worker's data dir (needs root, as CI has)."""
    mount = fault_stack.tmp / "small-disk"
    mount.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_an_index_write(fault_stack: FaultStack, small_disk: Any) -> None:
    client, checker, history = fault_stack.tenant("disk-full")
    fault_stack.start_worker("embed", queues="gpu.embed")
    small = {"SEEKQ_DATA_DIR": str(small_disk)}
    fault_stack.start_worker("index", queues="cpu.index,cpu.search,cpu.ping", **small)
    history.untracked_kinds.add("search")
    try:
        assert client.post("/v1/indexes", json={"name": "kb", "type": "flat"}).status_code == 201
        first = index_docs(client, history, "first", 2)
        checker.wait_terminal([first], 120)
        assert checker.statuses([first])[first] == "succeeded"
        filler = small_disk / "filler"
        fill(filler)
        second = index_docs(client, history, "second", 40)
        checker.wait_terminal([second], 120)
        assert checker.statuses([second])[second] == "failed"
        error_type, message = error_of(fault_stack, second)
        assert error_type == "ArtifactStoreFullError", (error_type, message)
        assert str(small_disk) not in message  # no server path in what the tenant reads
        hits = client.post("/v1/indexes/kb/search", json={"query": "first document 1", "k": 5})
        assert hits.status_code == 200, hits.text  # the last good version still serves
        assert hits.json()["version"] == 1
        assert {h["doc_id"] for h in hits.json()["hits"]} == {"first-0", "first-1"}
        filler.unlink()
        third = index_docs(client, history, "third", 40)
        settle(fault_stack, "disk full during an index write, then space freed", client,
               checker, history, {"failed": 1, "succeeded": 3})  # fmt: skip
        assert checker.statuses([third])[third] == "succeeded"
    finally:
        fault_stack.stop_workers()


def index_docs(client: httpx.Client, history: History, prefix: str, count: int) -> str:
    documents = [
        {"id": f"{prefix}-{i}", "text": f"{prefix} document {i}: " + "words " * 50}
        for i in range(count)
    ]
    response = client.post("/v1/indexes/kb/documents", json={"documents": documents})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    history.accept(job, None)
    return str(job["id"])


def fill(path: Any) -> None:
    """Fill the file system but for 4 KiB."""
    out = open(path, "wb")  # noqa: SIM115 (closing a full file raises too)
    try:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    except OSError:
        with contextlib.suppress(OSError):
            out.close()
    stat = os.statvfs(path)
    assert stat.f_bavail * stat.f_frsize < 65536

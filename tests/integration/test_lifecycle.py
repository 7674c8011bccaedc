"""The worker-side lifecycle against a real database: claims, leases, fenced writes."""

import time

import pytest
import redis
from sqlalchemy import text

from jobs.context import JobsContext
from jobs.keys import Principal
from jobs.lifecycle import LeaseHeldError
from jobs.status import JobStatus
from tests.conftest import Stack, make_context, redis_url


def principal(context: JobsContext) -> Principal:
    return context.keys.authenticate(context.keys.create("lifecycle").secret)


def test_takeover_after_lease_expiry_fences_the_stale_attempt(quiet_context: JobsContext) -> None:
    who = principal(quiet_context)
    job = quiet_context.service.submit(who, "ping", {"payload": "p"}).job
    first = quiet_context.lifecycle("worker-a")
    first.lease_s = 0.3
    second = quiet_context.lifecycle("worker-b")

    claim_a = first.claim(job.id)
    assert claim_a is not None and claim_a.attempt == 1
    with pytest.raises(LeaseHeldError) as held:
        second.claim(job.id)
    assert 0 < held.value.retry_in_s <= 0.5
    assert first.renew(claim_a)
    time.sleep(0.5)  # worker-a stops renewing: its lease expires

    claim_b = second.claim(job.id)
    assert claim_b is not None and claim_b.attempt == 2
    assert not first.renew(claim_a)
    assert not first.holds(claim_a) and second.holds(claim_b)
    assert first.succeed(claim_a, {"payload": "stale"}) is None
    assert second.succeed(claim_b, {"payload": "fresh"}) is JobStatus.SUCCEEDED
    assert second.claim(job.id) is None  # terminal: a redelivery does nothing

    final = quiet_context.service.get(who, job.id)
    assert final.status == "succeeded" and final.result == {"payload": "fresh"}
    assert final.attempts == 2


def test_lease_keeper_keeps_leases_alive_and_signals_a_cancel(
    quiet_context: JobsContext,
) -> None:
    from workers.execution import LeaseKeeper

    who = principal(quiet_context)
    jobs = [quiet_context.service.submit(who, "ping", {"payload": "p"}).job for _ in range(2)]
    worker = quiet_context.lifecycle("worker-a")
    worker.lease_s = 0.3
    claims = [worker.claim(job.id) for job in jobs]
    keeper = LeaseKeeper(check_every_s=0.05)
    try:
        stops = [keeper.hold(worker, claim) for claim in claims if claim is not None]
        time.sleep(1.0)  # more than three leases: only renewals keep them
        with pytest.raises(LeaseHeldError):
            quiet_context.lifecycle("worker-b").claim(jobs[0].id)
        assert not any(stop.is_set() for stop in stops)
        quiet_context.service.cancel(who, jobs[1].id)
        assert stops[1].wait(1.0) and not stops[0].is_set()
    finally:
        keeper.close()


def test_cancel_while_running_ends_cancelled(quiet_context: JobsContext) -> None:
    who = principal(quiet_context)
    job = quiet_context.service.submit(who, "ping", {"payload": "p"}).job
    worker = quiet_context.lifecycle("worker-a")
    claim = worker.claim(job.id)
    assert claim is not None
    assert quiet_context.service.cancel(who, job.id).status == "cancelling"
    assert not worker.holds(claim)  # what the runner's should_stop() sees
    assert not worker.renew(claim)
    assert worker.succeed(claim, {"payload": "late"}) is JobStatus.CANCELLED
    assert quiet_context.service.get(who, job.id).status == "cancelled"


def test_retryable_release_requeues_and_failure_is_recorded(quiet_context: JobsContext) -> None:
    who = principal(quiet_context)
    job = quiet_context.service.submit(who, "ping", {"payload": "p"}).job
    worker = quiet_context.lifecycle("worker-a")
    claim = worker.claim(job.id)
    assert claim is not None and worker.release(claim)
    assert quiet_context.service.get(who, job.id).status == "queued"
    again = worker.claim(job.id)
    assert again is not None and again.attempt == 2
    assert worker.fail(again, "ModelNotFoundError", "no embedding model named 'x'")
    failed = quiet_context.service.get(who, job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.type == "ModelNotFoundError"


def dispatched_at(context: JobsContext, job_id: str) -> object:
    with context.engine.connect() as connection:
        query = text("SELECT dispatched_at FROM jobs WHERE id = :id")
        return connection.execute(query, {"id": job_id}).scalar_one()


def test_broker_down_at_submit_keeps_the_job_for_the_outbox(
    stack: Stack, quiet_context: JobsContext
) -> None:
    from jobs.errors import BrokerUnavailableError

    who = principal(quiet_context)
    down = make_context(stack.database_url, 0)
    down.celery.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        kept = down.service.submit(who, "ping", {"payload": "p"}, idempotency_key="outage-1")
        with pytest.raises(BrokerUnavailableError):  # a caller waiting for it: 503 now
            down.service.submit(who, "ping", {"payload": "w"}, require_dispatch=True)
    finally:
        down.close()
    stored = quiet_context.service.get(who, kept.job.id)
    assert stored.status == "queued" and stored.idempotency_key == "outage-1"
    assert dispatched_at(quiet_context, stored.id) is None  # the sweep's to publish
    abandoned = quiet_context.service.list_jobs(who, status="failed").data[0]
    assert abandoned.error is not None and abandoned.error.type == "broker_unavailable"
    broker = redis.Redis.from_url(redis_url(stack.redis_db + 2))
    assert broker.llen("cpu.ping") == 0
    replay = quiet_context.service.submit(who, "ping", {"payload": "p"}, idempotency_key="outage-1")
    assert not replay.created and replay.job.id == stored.id
    assert broker.llen("cpu.ping") == 1  # the replay published the id the outage lost
    assert dispatched_at(quiet_context, stored.id) is not None
    assert quiet_context.lifecycle("w").claim(stored.id) is not None


def test_waiters_are_woken_by_the_notice_not_the_poll(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from jobs import notify

    monkeypatch.setattr(notify, "POLL_INTERVAL_S", 60.0)  # only a notice can wake in time
    client = redis.Redis.from_url(redis_url(stack.redis_db + 2))
    events = notify.JobEvents(client)
    done = threading.Event()
    results: list[bool] = []
    waiters = [
        threading.Thread(target=lambda: results.append(events.wait("job-1", done.is_set, 20)))
        for _ in range(5)
    ]
    for waiter in waiters:
        waiter.start()
    channel = notify.channel("job-1")
    while dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) < 5:  # all subscribed
        threading.Event().wait(0.01)
    done.set()
    events.announce("job-1", "succeeded")
    for waiter in waiters:
        waiter.join(timeout=15)
    client.close()
    assert results == [True] * 5

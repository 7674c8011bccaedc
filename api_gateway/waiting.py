"""Waiting for a job without holding a thread: the gateway's synchronous calls
(/v1/embeddings, non-streaming completions, GET /v1/jobs/{id}?wait=) wait here.

A waiter subscribes to the job's notice channel (jobs.notify) on the gateway's async Redis
client and re-reads the job from SQL on each notice and at least every POLL_INTERVAL_S, so
a lost notice only delays it. The SQL reads run in the threadpool, briefly; the wait itself
holds no thread, so thousands of slow generations can be waited on at once.
"""

import logging
import time

import anyio
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from jobs.keys import Principal
from jobs.notify import POLL_INTERVAL_S, channel
from jobs.records import JobView
from jobs.service import JobService
from jobs.status import JobStatus, is_terminal

log = logging.getLogger(__name__)


async def wait_for_job(
    redis: AsyncRedis, service: JobService, who: Principal, job_id: str, timeout_s: float
) -> JobView:
    """The job once terminal, or as it stands when `timeout_s` passes (404 at once for an
    unknown job: the first read raises)."""
    deadline = time.monotonic() + timeout_s
    pubsub = await _subscribe(redis, job_id)
    try:
        while True:
            job = await run_in_threadpool(service.get, who, job_id)
            remaining = deadline - time.monotonic()
            if is_terminal(JobStatus(job.status)) or remaining <= 0:
                return job
            pubsub = await _next_notice(pubsub, min(remaining, POLL_INTERVAL_S))
    finally:
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _subscribe(redis: AsyncRedis, job_id: str) -> PubSub | None:
    """Subscribed before the first read, so a notice sent in between is not missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel(job_id))
    except RedisError as exc:
        log.warning("job notices unavailable, polling: %s", type(exc).__name__)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        return None
    return pubsub


async def _next_notice(pubsub: PubSub | None, timeout_s: float) -> PubSub | None:
    """Wait for a notice (or the timeout); without Redis, sleep instead."""
    if pubsub is not None:
        try:
            await pubsub.get_message(timeout=timeout_s)
            return pubsub
        except RedisError as exc:
            log.warning("job notices lost, polling: %s", type(exc).__name__)
            await pubsub.aclose()  # type: ignore[no-untyped-call]
    await anyio.sleep(timeout_s)
    return None

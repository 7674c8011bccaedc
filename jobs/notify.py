"""Job-finished notices over Redis pub/sub: a hint for waiters, never the source of truth.

A notice carries the job id (in the channel name) and its new status; nothing else. Each
waiter subscribes to its own job's channel on a pooled connection. (One listener thread
per process waking all waiters was tried: it saves connections but added ~2 ms to
submit→result latency, measured with `seekq bench` Q2, so waiters read their own.)
"""

import logging
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "seekq:job:"
# Cancel requests for running jobs: the message is the job id. Workers listen, so a running
# generation stops within one decoding step instead of at its next lease check.
CANCEL_CHANNEL = "seekq:cancel"
# Waiters re-read SQL at least this often, so a lost notice only delays them.
POLL_INTERVAL_S = 0.5


def channel(job_id: str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


class JobEvents:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def announce(self, job_id: str, status: str) -> None:
        try:
            self.redis.publish(channel(job_id), status)
        except RedisError as exc:
            log.warning("job notice not sent job_id=%s error=%s", job_id, type(exc).__name__)

    def request_cancel(self, job_id: str) -> None:
        try:
            self.redis.publish(CANCEL_CHANNEL, job_id)
        except RedisError as exc:  # the worker's lease check still sees it, later
            log.warning("cancel notice not sent job_id=%s error=%s", job_id, type(exc).__name__)

    def wait(self, job_id: str, is_done: Callable[[], bool], timeout_s: float) -> bool:
        """Block until `is_done()` is true or the timeout passes; returns the last answer."""
        try:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(channel(job_id))
        except RedisError:
            return _poll(is_done, timeout_s)
        try:
            return _wait_subscribed(pubsub, is_done, timeout_s)
        finally:
            pubsub.close()


def _wait_subscribed(pubsub: object, is_done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if is_done():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            pubsub.get_message(timeout=min(remaining, POLL_INTERVAL_S))  # type: ignore[attr-defined]
        except RedisError:
            return _poll(is_done, max(0.0, deadline - time.monotonic()))


def _poll(is_done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not is_done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True

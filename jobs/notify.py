"""Job-finished notices over Redis pub/sub: a hint for waiters, never the source of truth.

A notice carries the job id (in the channel name) and its new status; nothing else.
Each process has one listener thread on one Redis connection (a pattern subscription)
that wakes whichever of its threads wait for that job, so a thousand waiting HTTP
requests hold one Redis connection, not a thousand. Waiters also re-read SQL every
POLL_INTERVAL_S, so a lost notice, or Redis being down, only delays them.
"""

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "seekq:job:"
POLL_INTERVAL_S = 0.5
RECONNECT_S = 1.0


def channel(job_id: str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


class JobEvents:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiters: defaultdict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()

    def announce(self, job_id: str, status: str) -> None:
        try:
            self.redis.publish(channel(job_id), status)
        except RedisError as exc:
            log.warning("job notice not sent job_id=%s error=%s", job_id, type(exc).__name__)

    def wait(self, job_id: str, is_done: Callable[[], bool], timeout_s: float) -> bool:
        """Block until `is_done()` is true or the timeout passes; returns the last answer."""
        woken = self._register(job_id)
        try:
            deadline = time.monotonic() + timeout_s
            while not is_done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                woken.wait(min(remaining, POLL_INTERVAL_S))
                woken.clear()
            return True
        finally:
            self._unregister(job_id, woken)

    def close(self) -> None:
        self._closed.set()

    def _register(self, job_id: str) -> threading.Event:
        # Registered before the first is_done() check: a notice sent in between still wakes.
        woken = threading.Event()
        with self._lock:
            self._waiters[job_id].add(woken)
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="job-notices")
                self._listener.daemon = True
                self._listener.start()
        return woken

    def _unregister(self, job_id: str, woken: threading.Event) -> None:
        with self._lock:
            self._waiters[job_id].discard(woken)
            if not self._waiters[job_id]:
                del self._waiters[job_id]

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                self._listen_once()
            # redis-py raises ValueError when its pool is closed under a blocking read.
            except (RedisError, OSError, ValueError) as exc:
                if self._closed.is_set():
                    return
                log.warning("job notice listener lost Redis (%s); retrying", type(exc).__name__)
                self._closed.wait(RECONNECT_S)

    def _listen_once(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
            while not self._closed.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._wake(message["channel"].decode()[len(CHANNEL_PREFIX) :])
        finally:
            pubsub.close()

    def _wake(self, job_id: str) -> None:
        with self._lock:
            for woken in self._waiters.get(job_id, ()):
                woken.set()

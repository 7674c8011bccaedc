"""Cancel requests pushed to the worker: one Redis subscriber thread per worker process.

`JobService.cancel` publishes the job id on `seekq:cancel`; the job's runner is told at
once (its stop event is set), so a generation stops within one decoding step. The
lease keeper's SQL check (workers.execution.LeaseKeeper) stays as the fallback when a
notice is lost.
"""

import logging
import threading

from redis import Redis
from redis.exceptions import RedisError

from jobs.notify import CANCEL_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_S = 1.0


class CancelWatch:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)
        self._thread.start()

    def watch(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            self._events[job_id] = event

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._events.pop(job_id, None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._listen()
            except RedisError as exc:
                log.warning("cancel watch reconnecting: %s", type(exc).__name__)
                self._closed.wait(RECONNECT_S)

    def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(CANCEL_CHANNEL)
            while not self._closed.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    self._cancel(message["data"])
        finally:
            pubsub.close()

    def _cancel(self, data: bytes | str) -> None:
        job_id = data.decode() if isinstance(data, bytes) else str(data)
        with self._lock:
            event = self._events.get(job_id)
        if event is not None:
            log.info("cancel requested job_id=%s", job_id)
            event.set()

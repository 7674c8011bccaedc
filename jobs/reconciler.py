"""The reconciler: jobs whose worker vanished are given to another worker.

A running job holds a lease in SQL, renewed by its worker every third of `lease_s`. When
a worker dies (kill -9, OOM, a lost machine) the lease runs out; Redis would redeliver
the unacknowledged message only after its visibility timeout (an hour by default, and a
fine-tune may run longer than that), so seekq does not wait for it: the sweep publishes
such jobs again, and the next worker's claim takes them over (a fenced write: at most
one attempt runs a job). A job whose lease ran out on its last allowed attempt has
killed its worker `max_attempts` times and fails as `worker_lost` instead of looping.

Every worker process runs the sweep; a Redis lock lets one of them sweep per interval.
"""

import logging
import threading
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from jobs.catalog import get_entry
from jobs.errors import BrokerUnavailableError
from jobs.notify import JobEvents
from jobs.queue import Publisher
from jobs.status import JobStatus
from storage.repos import JobRepo

log = logging.getLogger(__name__)

LOCK_KEY = "seekq:reconciler"
BATCH = 500
EXPIRED_STATUSES = (JobStatus.RUNNING.value, JobStatus.CANCELLING.value)


class Reconciler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        events: JobEvents,
        max_attempts: int,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.events = events
        self.max_attempts = max_attempts

    def sweep(self) -> tuple[int, int]:
        """(jobs published again, jobs failed as worker_lost)."""
        now = datetime.now(UTC)
        with self.sessions() as session:
            expired = JobRepo(session).expired_leases(EXPIRED_STATUSES, now, BATCH)
        published = lost = 0
        for job_id, kind, attempt in expired:
            if attempt >= self.max_attempts and self._fail_lost(job_id, attempt, now):
                lost += 1
                continue
            try:
                self.publisher.publish(get_entry(kind), job_id)
                published += 1
            except BrokerUnavailableError:
                log.warning("reconciler cannot publish: broker unavailable")
                break
        if published or lost:
            log.warning("reconciler: %d job(s) published again, %d lost", published, lost)
        return published, lost

    def _fail_lost(self, job_id: str, attempt: int, now: datetime) -> bool:
        values = {
            "status": JobStatus.FAILED.value,
            "error_type": "worker_lost",
            "error_message": f"the worker running it was lost on each of {attempt} attempts",
            "finished_at": now,
            "lease_expires_at": None,
        }
        with self.sessions.begin() as session:
            ended = JobRepo(session).update_where(
                job_id, statuses=[JobStatus.RUNNING.value], attempt=attempt, values=values
            )
        if ended:
            self.events.announce(job_id, JobStatus.FAILED.value)
        return ended


class ReconcilerThread:
    """Sweeps every `every_s` seconds, when it wins the cluster-wide Redis lock."""

    def __init__(self, reconciler: Reconciler, redis: Redis, every_s: float) -> None:
        self.reconciler = reconciler
        self.redis = redis
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> "ReconcilerThread":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if self._won_lock():
                    self.reconciler.sweep()
            except Exception:  # SQL or Redis down: the next round tries again
                log.exception("reconciler sweep failed")

    def _won_lock(self) -> bool:
        try:
            ttl_ms = max(1, int(self.every_s * 900))
            return bool(self.redis.set(LOCK_KEY, "1", nx=True, px=ttl_ms))
        except RedisError:
            return False

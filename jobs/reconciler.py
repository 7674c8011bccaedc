"""The reconciler: jobs whose worker vanished are given to another worker.

A running job holds a lease in SQL, renewed by its worker every third of `lease_s`. When
a worker dies (kill -9, OOM, a lost machine) the lease runs out; Redis would redeliver
the unacknowledged message only after its visibility timeout (an hour by default, and a
fine-tune may run longer than that), so seekq does not wait for it: once a lease has been
dead for a grace period (one lease), the sweep gives the job back to the queue (a write
fenced on its attempt and on the dead lease, so it happens once) and publishes it; the
next worker's claim takes it over as a new attempt. A job cancelled while its worker
died ends cancelled. A job whose lease ran out on its last allowed attempt fails as
`worker_lost` instead of looping (Celery has no redelivery cap).

The same sweep is the outbox's (jobs.dispatch): it publishes queued jobs that have had
no message for a grace period (Redis was down at submit, or a requeue's publish failed),
and all queued jobs again when the broker's epoch key shows Redis lost its data.

It also re-publishes webhook deliveries that are due (a retry after its backoff,
or one whose message was lost) and takes back those whose sender died mid-attempt.

Every worker process runs the sweep; a Redis lock lets one of them sweep per interval.
"""

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from jobs.catalog import get_entry
from jobs.dispatch import BrokerEpoch, Dispatcher
from jobs.lifecycle import Claim, EndObserver
from jobs.notify import JobEvents
from jobs.queue import Publisher
from jobs.registry import ModelRegistry
from jobs.status import HELD, JobStatus
from jobs.webhook_delivery import Deliverer
from jobs.webhooks import WebhookOutbox
from storage.repos import JobRepo

log = logging.getLogger(__name__)

LOCK_KEY = "seekq:reconciler"
BATCH = 500


class Reconciler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        events: JobEvents,
        max_attempts: int,
        grace_s: float,
        outbox: WebhookOutbox | None = None,
        deliverer: Deliverer | None = None,
        observer: EndObserver | None = None,
        dispatch_grace_s: float = 10.0,
        models: ModelRegistry | None = None,
    ) -> None:
        self.sessions = sessions
        # With the registry, requeued and swept jobs go to their model's own queue.
        self.dispatcher = Dispatcher(sessions, publisher, models)
        self.dispatch_grace_s = dispatch_grace_s
        self.events = events
        self.max_attempts = max_attempts
        self.outbox = outbox
        self.deliverer = deliverer
        self.observer = observer  # counts the jobs it ends (worker_lost) in the metrics
        # A lease must have been dead this long (one lease period by default): a worker
        # that missed a renewal or two (a database blip) is not taken over at once.
        self.grace_s = grace_s

    def sweep(self, broker_reset: bool = False) -> tuple[int, int]:
        """(jobs given back to the queue, jobs failed as worker_lost). `broker_reset`:
        Redis lost its messages, so every queued job is published again."""
        if broker_reset:
            forgotten = self.dispatcher.forget_all()
            log.warning("broker lost its data: %d queued job(s) to publish again", forgotten)
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.grace_s)
        with self.sessions() as session:
            expired = JobRepo(session).expired_leases(HELD, cutoff, BATCH)
        requeued = lost = 0
        for row in expired:
            attempt = row.attempt
            job = Claim(row.id, row.kind, row.tenant_id, attempt, {}, row.parent_id)
            if row.status == JobStatus.CANCELLING.value:
                self._end(job, cutoff, JobStatus.CANCELLED, {})
            elif attempt >= self.max_attempts:
                lost += self._end(job, cutoff, JobStatus.FAILED, _lost(attempt))
            elif self._requeue(row.id, attempt, cutoff):
                requeued += 1
                # Not taken (broker down): it stays unmarked for the outbox sweep below.
                self.dispatcher.dispatch(get_entry(row.kind), [row.id])
        self.dispatcher.sweep(self.dispatch_grace_s)
        if requeued or lost:
            log.warning("reconciler: %d job(s) given back to the queue, %d lost", requeued, lost)
        if self.deliverer is not None and self.outbox is not None:
            self.deliverer.sweep(self.outbox.publish)
        return requeued, lost

    def _requeue(self, job_id: str, attempt: int, cutoff: datetime) -> bool:
        """running -> queued, only if the same attempt still holds the same dead lease:
        the job is published once, not on every sweep."""
        values = {"status": JobStatus.QUEUED.value, "lease_expires_at": None, "dispatched_at": None}
        return self._update(job_id, attempt, cutoff, JobStatus.RUNNING, values)

    def _end(self, job: Claim, cutoff: datetime, status: JobStatus, values: dict[str, Any]) -> bool:
        """The terminal write, fenced on the dead lease, with the job's webhook events."""
        final = {**values, "status": status.value, "finished_at": datetime.now(UTC)}
        final["lease_expires_at"] = None
        source = JobStatus.CANCELLING if status is JobStatus.CANCELLED else JobStatus.RUNNING
        deliveries: list[str] = []
        with self.sessions.begin() as session:
            ended = JobRepo(session).update_if_lease_expired(
                job.job_id, source.value, job.attempt, cutoff, final
            )
            if ended and self.outbox is not None:
                deliveries = self.outbox.record(session, [job.ended(status)])
        if ended:
            self.events.announce(job.job_id, status.value)
            if self.outbox is not None:
                self.outbox.publish(deliveries)
            if self.observer is not None:
                self.observer(job, status.value, values.get("error_type"))
        return ended

    def _update(
        self,
        job_id: str,
        attempt: int,
        cutoff: datetime,
        source: JobStatus,
        values: dict[str, Any],
    ) -> bool:
        with self.sessions.begin() as session:
            return JobRepo(session).update_if_lease_expired(
                job_id, source.value, attempt, cutoff, values
            )


def _lost(attempt: int) -> dict[str, Any]:
    return {
        "error_type": "worker_lost",
        "error_message": (
            f"the worker running attempt {attempt} (the last allowed) stopped renewing its "
            "lease; the job is not tried again"
        ),
    }


class ReconcilerThread:
    """Sweeps every `every_s` seconds, when it wins the cluster-wide Redis lock."""

    def __init__(self, reconciler: Reconciler, redis: Redis, every_s: float) -> None:
        self.reconciler = reconciler
        self.redis = redis
        self.epoch = BrokerEpoch(redis)
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
                    self.reconciler.sweep(broker_reset=self.epoch.was_reset())
            except Exception:  # SQL or Redis down: the next round tries again
                log.exception("reconciler sweep failed")

    def _won_lock(self) -> bool:
        try:
            ttl_ms = max(1, int(self.every_s * 900))
            return bool(self.redis.set(LOCK_KEY, "1", nx=True, px=ttl_ms))
        except RedisError:
            return False

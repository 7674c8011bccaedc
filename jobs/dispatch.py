"""The outbox: a committed job reaches its queue even if Redis was down when it was made.

A job row is committed with `dispatched_at` NULL. Publishing its id and then marking it
dispatched is the common path; when the publish fails (Redis down, or the process died
between the commit and the publish) the row stays unmarked and the reconciler's sweep
publishes it once it is older than a grace period. Publishing twice is always safe: a
message for a job that is claimed or finished does nothing.

Redis may also lose messages it had taken (a restart without persistence, a flushed
database). seekq keeps an epoch key in the broker's database; when the sweep finds it
gone, every queued job loses its marker and is published again.

Given the model registry, a dispatcher publishes a job whose model has its own queue to
that queue: it is chosen here from the row's spec (jobs.queue.queue_for), since a sweep,
a requeue or a fan-out knows only job ids.
"""

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.catalog import KindEntry, get_entry
from jobs.errors import BrokerUnavailableError
from jobs.queue import Publisher, has_own_queues, queue_for
from jobs.registry import ModelRegistry
from storage.repos import JobRepo
from storage.tables import JobRow

log = logging.getLogger(__name__)

EPOCH_KEY = "seekq:broker-epoch"
SWEEP_BATCH = 1000
MARK_CHUNK = 500  # ids per UPDATE ... IN (...)


class Dispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        models: ModelRegistry | None = None,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.models = models  # None: every job goes to its kind's queue

    def dispatch(self, entry: KindEntry, job_ids: Sequence[str]) -> list[str]:
        """Publish committed jobs and mark them; returns the ids the broker did not take
        (left for the sweep)."""
        routed = self._routed(entry, job_ids)
        sent: list[str] = []
        for n, job_id in enumerate(job_ids):
            try:
                self.publisher.publish(routed.get(job_id, entry), job_id)
            except BrokerUnavailableError:
                left = list(job_ids[n:])
                log.warning("broker down: %d job(s) left to the outbox sweep", len(left))
                self._mark(sent)
                return left
            sent.append(job_id)
        self._mark(sent)
        return []

    def sweep(self, grace_s: float) -> int:
        """Publish queued jobs that have had no message for `grace_s`; returns how many."""
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
        with self.sessions() as session:
            pending = JobRepo(session).undispatched(cutoff, SWEEP_BATCH)
        published = 0
        for job_id, kind in pending:
            if self.dispatch(get_entry(kind), [job_id]):
                break  # the broker is still down: the next sweep tries again
            published += 1
        if published:
            log.warning("outbox sweep: %d undispatched job(s) published", published)
        return published

    def _routed(self, entry: KindEntry, job_ids: Sequence[str]) -> dict[str, KindEntry]:
        """`entry` pointed at the model's own queue, for each job whose model has one. The
        specs are read only while some model of the kind has a queue: no extra query on
        the submit path otherwise."""
        if self.models is None or not job_ids or not has_own_queues(entry, self.models):
            return {}
        routed: dict[str, KindEntry] = {}
        with self.sessions() as session:
            for lo in range(0, len(job_ids), MARK_CHUNK):
                chunk = job_ids[lo : lo + MARK_CHUNK]
                query = select(JobRow.id, JobRow.spec).where(JobRow.id.in_(chunk))
                for job_id, spec in session.execute(query):
                    queue = queue_for(entry, spec, self.models)
                    if queue != entry.queue:
                        routed[job_id] = dataclasses.replace(entry, queue=queue)
        return routed

    def forget_all(self) -> int:
        with self.sessions.begin() as session:
            return JobRepo(session).forget_dispatches()

    def _mark(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            for lo in range(0, len(job_ids), MARK_CHUNK):
                JobRepo(session).mark_dispatched(job_ids[lo : lo + MARK_CHUNK], now)


class BrokerEpoch:
    """Notices that the broker's database lost its data since the last look."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def was_reset(self) -> bool:
        """True once after the epoch key went missing (and on the very first look, which
        costs one harmless re-publish of whatever is queued)."""
        try:
            return bool(self.redis.set(EPOCH_KEY, uuid.uuid4().hex, nx=True))
        except RedisError:
            return False  # down: nothing can be published now anyway

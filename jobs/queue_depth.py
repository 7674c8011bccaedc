"""Backlog metrics, read when Prometheus scrapes: `seekq_queue_depth{queue}` (messages
waiting in each Redis queue, LLEN; exported by the gateway and every worker) and, from
SQL, queued jobs and the age of the oldest per kind (the gateway)."""

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs.catalog import queues
from jobs.status import JobStatus
from storage.repos import JobRepo


class QueueDepth(Collector):
    """`extra`: queues besides the catalog's, e.g. those models have of their own
    (`ModelRegistry.own_queues`), so their backlog is seen and can be scaled on."""

    def __init__(self, redis: Redis, extra: Iterable[str] = ()) -> None:
        self.redis = redis
        self.names = sorted(set(queues()) | set(extra))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "seekq_queue_depth", "Messages waiting in each Redis queue.", labels=["queue"]
        )
        names = self.names
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            depths = pipe.execute()
        except RedisError:
            return  # broker down: no samples (readyz says why), not a failed scrape
        for name, depth in zip(names, depths, strict=True):
            family.add_metric([name], float(depth))
        yield family


class QueuedJobs(Collector):
    """From SQL, which sees what Redis cannot (how long jobs have waited):

    - `seekq_jobs_queued{kind}`: jobs in status queued (sub-jobs included).
    - `seekq_queue_oldest_age_seconds{kind}`: how long the oldest of them has waited.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "seekq_jobs_queued", "Jobs waiting in status queued, by kind.", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "seekq_queue_oldest_age_seconds",
            "How long the oldest queued job of each kind has waited.",
            labels=["kind"],
        )
        try:
            with self.sessions() as session:
                rows = JobRepo(session).queued_by_kind(JobStatus.QUEUED.value)
        except SQLAlchemyError:
            return  # database down: no samples (readyz says why)
        now = datetime.now(UTC)
        for kind, count, created in rows:
            queued.add_metric([kind], float(count))
            oldest.add_metric([kind], max(0.0, (now - created).total_seconds()))
        yield queued
        yield oldest

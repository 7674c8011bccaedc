"""The reconciler against a real SQLite database: what it takes over, once, and what not."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.catalog import KindEntry
from jobs.errors import BrokerUnavailableError
from jobs.reconciler import Reconciler
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade
from storage.repos import JobRepo, TenantRepo
from storage.tables import JobRow, TenantRow


class Published(list[str]):
    down = False  # True: the broker refuses every message

    def publish(self, entry: KindEntry, job_id: str) -> None:
        if self.down:
            raise BrokerUnavailableError("broker unavailable: ConnectionError")
        self.append(job_id)


class Announced(list[tuple[str, str]]):
    def announce(self, job_id: str, status: str) -> None:
        self.append((job_id, status))


@pytest.fixture
def sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    with factory.begin() as session:
        TenantRepo(session).add(TenantRow(id="t", name="t"))
    return factory


def add_job(  # type: ignore[no-untyped-def]
    sessions,
    job_id: str,
    status: str,
    attempt: int,
    lease_age_s: float | None,
    age_s: float = 0,
    dispatched: bool = True,
) -> None:
    lease = None
    if lease_age_s is not None:
        lease = datetime.now(UTC) - timedelta(seconds=lease_age_s)
    with sessions.begin() as session:
        JobRepo(session).add(
            JobRow(
                id=job_id,
                tenant_id="t",
                kind="ping",
                status=status,
                actor="k",
                spec={},
                attempt=attempt,
                lease_expires_at=lease,
                created_at=datetime.now(UTC) - timedelta(seconds=age_s),
                dispatched_at=datetime.now(UTC) if dispatched else None,
            )
        )


def state(sessions, job_id: str) -> tuple[str, int, str | None]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        row = session.get(JobRow, job_id)
        return row.status, row.attempt, row.error_type


def test_a_dead_lease_is_requeued_and_published_once(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "dead", "running", 1, lease_age_s=100)
    add_job(sessions, "alive", "running", 1, lease_age_s=-20)  # renewed, 20 s to go
    add_job(sessions, "late", "running", 1, lease_age_s=5)  # within the grace period
    add_job(sessions, "queued", "queued", 0, lease_age_s=None)
    published, announced = Published(), Announced()
    reconciler = Reconciler(sessions, published, announced, max_attempts=3, grace_s=30)  # type: ignore[arg-type]
    assert reconciler.sweep() == (1, 0)
    assert published == ["dead"]
    assert state(sessions, "dead") == ("queued", 1, None)
    assert state(sessions, "alive")[0] == state(sessions, "late")[0] == "running"
    assert reconciler.sweep() == (0, 0)  # given back once, not on every sweep
    assert published == ["dead"]


def test_the_last_attempt_ends_worker_lost_and_a_cancel_ends_cancelled(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "doomed", "running", 3, lease_age_s=100)
    add_job(sessions, "stopping", "cancelling", 1, lease_age_s=100)
    published, announced = Published(), Announced()
    ended: list[tuple[str, str, str | None]] = []
    reconciler = Reconciler(
        sessions,
        published,  # type: ignore[arg-type]
        announced,  # type: ignore[arg-type]
        max_attempts=3,
        grace_s=30,
        observer=lambda claim, status, error: ended.append((claim.job_id, status, error)),
    )
    assert reconciler.sweep() == (0, 1)
    assert published == []
    assert state(sessions, "doomed") == ("failed", 3, "worker_lost")
    assert state(sessions, "stopping") == ("cancelled", 1, None)
    assert sorted(announced) == [("doomed", "failed"), ("stopping", "cancelled")]
    # The worker metrics count them (seekq_jobs_total{error="worker_lost"}).
    assert sorted(ended) == [("doomed", "failed", "worker_lost"), ("stopping", "cancelled", None)]


def dispatched(sessions, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return session.get(JobRow, job_id).dispatched_at is not None


def test_the_outbox_sweep_publishes_undispatched_jobs_after_the_grace(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "lost", "queued", 0, None, age_s=60, dispatched=False)
    add_job(sessions, "fresh", "queued", 0, None, age_s=1, dispatched=False)  # still in grace
    add_job(sessions, "sent", "queued", 0, None, age_s=60)
    add_job(sessions, "done", "succeeded", 1, None, age_s=60, dispatched=False)
    published = Published()
    reconciler = Reconciler(sessions, published, Announced(), 3, 30, dispatch_grace_s=10)  # type: ignore[arg-type]
    published.down = True
    assert reconciler.sweep() == (0, 0)
    assert published == [] and not dispatched(sessions, "lost")  # kept for the next sweep
    published.down = False
    reconciler.sweep()
    assert published == ["lost"] and dispatched(sessions, "lost")
    reconciler.sweep()
    assert published == ["lost"]  # marked: published once


def test_a_requeue_the_broker_refused_is_published_by_a_later_sweep(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "dead", "running", 1, lease_age_s=100, age_s=600)
    published = Published()
    reconciler = Reconciler(sessions, published, Announced(), 3, 30, dispatch_grace_s=10)  # type: ignore[arg-type]
    published.down = True
    assert reconciler.sweep() == (1, 0)
    assert state(sessions, "dead") == ("queued", 1, None) and not dispatched(sessions, "dead")
    published.down = False
    assert reconciler.sweep() == (0, 0)
    assert published == ["dead"]


def test_a_broker_that_lost_its_data_gets_every_queued_job_again(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "a", "queued", 0, None, age_s=60)
    add_job(sessions, "b", "queued", 0, None, age_s=30)
    add_job(sessions, "running", "running", 1, lease_age_s=-20, age_s=60)
    published = Published()
    reconciler = Reconciler(sessions, published, Announced(), 3, 30, dispatch_grace_s=10)  # type: ignore[arg-type]
    reconciler.sweep()
    assert published == []
    reconciler.sweep(broker_reset=True)
    assert published == ["a", "b"]  # oldest first; the running job keeps its worker

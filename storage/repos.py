"""Repositories: each takes a Session and never commits; the caller owns the transaction.

Status values are plain strings here: the state machine lives in `jobs`, which passes the
allowed source statuses into the conditional updates below.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    CursorResult,
    Row,
    Table,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, load_only

from storage.tables import ApiKeyRow, AuditEventRow, JobRow, TenantRow


@dataclass(frozen=True)
class JobPageQuery:
    tenant_id: str
    limit: int
    kind: str | None = None
    status: str | None = None
    # Keyset cursor: jobs strictly older than (created_at, id).
    before: tuple[datetime, str] | None = None
    # None: top-level jobs only; a job id: that job's sub-jobs (an index job's embeds).
    parent_id: str | None = None


def _utc(moment: datetime) -> datetime:
    """MIN() over a UTCDateTime column comes back without the type's conversion."""
    if isinstance(moment, str):  # SQLite returns the stored text
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def insert_row(session: Session, row: JobRow | AuditEventRow) -> None:
    """One Core INSERT of a new row's set columns (unset ones take their defaults): about
    0.4 ms less per submit than the unit of work's add + flush, measured on SQLite."""
    table = row.__table__
    values = {c.key: v for c in table.columns if (v := getattr(row, c.key)) is not None}
    session.execute(_insert(table), values)


@lru_cache
def _insert(table: Table) -> Any:
    return table.insert()


class TenantRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def find_by_name(self, name: str) -> TenantRow | None:
        return self.session.scalar(select(TenantRow).where(TenantRow.name == name))

    def add(self, row: TenantRow) -> None:
        self.session.add(row)


class ApiKeyRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def find(self, key_id: str) -> ApiKeyRow | None:
        return self.session.get(ApiKeyRow, key_id)

    def add(self, row: ApiKeyRow) -> None:
        self.session.add(row)


class AuditRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: AuditEventRow) -> None:
        self.session.add(row)

    def insert(self, row: AuditEventRow) -> None:
        """INSERT the event now, without tracking it in the session (the submit path)."""
        insert_row(self.session, row)

    def page(self, tenant_id: str, limit: int, before_id: int | None) -> Sequence[AuditEventRow]:
        query = select(AuditEventRow).where(AuditEventRow.tenant_id == tenant_id)
        if before_id is not None:
            query = query.where(AuditEventRow.id < before_id)
        return self.session.scalars(query.order_by(AuditEventRow.id.desc()).limit(limit)).all()

    def for_job(self, tenant_id: str, job_id: str, limit: int) -> Sequence[AuditEventRow]:
        query = select(AuditEventRow).where(
            AuditEventRow.tenant_id == tenant_id, AuditEventRow.job_id == job_id
        )
        return self.session.scalars(query.order_by(AuditEventRow.id).limit(limit)).all()


class JobRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: JobRow) -> None:
        self.session.add(row)

    def insert(self, row: JobRow) -> None:
        """INSERT the job now, without tracking it in the session (the submit path)."""
        insert_row(self.session, row)

    def find(self, job_id: str, tenant_id: str | None = None) -> JobRow | None:
        query = select(JobRow).where(JobRow.id == job_id)
        if tenant_id is not None:
            query = query.where(JobRow.tenant_id == tenant_id)
        return self.session.scalar(query)

    def find_by_idempotency_key(self, tenant_id: str, key: str) -> JobRow | None:
        query = select(JobRow).where(JobRow.tenant_id == tenant_id, JobRow.idempotency_key == key)
        return self.session.scalar(query)

    def page(self, q: JobPageQuery) -> Sequence[JobRow]:
        query = select(JobRow).where(JobRow.tenant_id == q.tenant_id)
        if q.parent_id is None:
            query = query.where(JobRow.parent_id.is_(None))
        else:
            query = query.where(JobRow.parent_id == q.parent_id)
        if q.kind is not None:
            query = query.where(JobRow.kind == q.kind)
        if q.status is not None:
            query = query.where(JobRow.status == q.status)
        if q.before is not None:
            created, job_id = q.before
            older = or_(
                JobRow.created_at < created,
                and_(JobRow.created_at == created, JobRow.id < job_id),
            )
            query = query.where(older)
        order = (JobRow.created_at.desc(), JobRow.id.desc())
        return self.session.scalars(query.order_by(*order).limit(q.limit)).all()

    def expired_leases(
        self, statuses: Collection[str], cutoff: datetime, limit: int
    ) -> Sequence[JobRow]:
        """Jobs in `statuses` whose lease ran out before `cutoff` (their id, kind, tenant,
        parent, attempt and status loaded; not the spec or result)."""
        query = (
            select(JobRow)
            .options(
                load_only(
                    JobRow.id,
                    JobRow.kind,
                    JobRow.tenant_id,
                    JobRow.parent_id,
                    JobRow.attempt,
                    JobRow.status,
                )
            )
            .where(JobRow.status.in_(statuses), JobRow.lease_expires_at < cutoff)
            .order_by(JobRow.lease_expires_at)
            .limit(limit)
        )
        return self.session.scalars(query).all()

    def update_if_lease_expired(
        self, job_id: str, status: str, attempt: int, cutoff: datetime, values: dict[str, Any]
    ) -> bool:
        """UPDATE the job only while it is `status` at `attempt` with a lease dead since
        before `cutoff` (the reconciler's fenced takeover)."""
        query = (
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.status == status,
                JobRow.attempt == attempt,
                JobRow.lease_expires_at < cutoff,
            )
            .values(**values)
        )
        result = self.session.execute(query)
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    def undispatched(self, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
        """(id, kind) of queued jobs with no message known to be in Redis, created before
        `cutoff`, most urgent first (ix_jobs_undispatched)."""
        query = (
            select(JobRow.id, JobRow.kind)
            .where(
                JobRow.status == "queued",
                JobRow.dispatched_at.is_(None),
                JobRow.created_at < cutoff,
            )
            .order_by(JobRow.created_at)
            .limit(limit)
        )
        return [(job_id, kind) for job_id, kind in self.session.execute(query)]

    def mark_dispatched(self, job_ids: Collection[str], when: datetime) -> None:
        query = update(JobRow).where(JobRow.id.in_(job_ids)).values(dispatched_at=when)
        self.session.execute(query, execution_options={"synchronize_session": False})

    def forget_dispatches(self) -> int:
        """Every queued job loses its marker: the broker lost its messages (a restart
        without persistence), so each needs publishing again."""
        query = (
            update(JobRow)
            .where(JobRow.status == "queued", JobRow.dispatched_at.is_not(None))
            .values(dispatched_at=None)
        )
        result = self.session.execute(query, execution_options={"synchronize_session": False})
        assert isinstance(result, CursorResult)
        return result.rowcount

    def queued_by_kind(self, status: str) -> list[tuple[str, int, datetime]]:
        """(kind, jobs, oldest created_at) of every job in `status` (ix_jobs_status)."""
        query = (
            select(JobRow.kind, func.count(), func.min(JobRow.created_at))
            .where(JobRow.status == status)
            .group_by(JobRow.kind)
        )
        return [(kind, int(n), _utc(oldest)) for kind, n, oldest in self.session.execute(query)]

    def in_flight_totals(self, tenant_id: str, statuses: Collection[str]) -> tuple[int, int]:
        """(jobs, their tokens) of the tenant's top-level jobs in `statuses`
        (ix_jobs_tenant_status): what the quotas count."""
        query = select(func.count(), func.coalesce(func.sum(JobRow.tokens), 0)).where(
            JobRow.tenant_id == tenant_id,
            JobRow.status.in_(statuses),
            JobRow.parent_id.is_(None),
        )
        jobs, tokens = self.session.execute(query).one()
        return int(jobs or 0), int(tokens or 0)

    def find_state(self, job_id: str, tenant_id: str | None = None) -> tuple[str, int] | None:
        """(status, attempt) without loading the spec or the result."""
        query = select(JobRow.status, JobRow.attempt).where(JobRow.id == job_id)
        if tenant_id is not None:
            query = query.where(JobRow.tenant_id == tenant_id)
        row = self.session.execute(query).first()
        return (row.status, row.attempt) if row else None

    def update_where(
        self,
        job_id: str,
        *,
        statuses: Collection[str],
        values: dict[str, Any],
        attempt: int | None = None,
    ) -> bool:
        """One conditional UPDATE of plain values; True when the row matched. The basis of
        every transition: the row must be in one of `statuses` and, if given, at `attempt`."""
        query = _update_statement(tuple(statuses), attempt is not None, tuple(sorted(values)))
        params = {"job_id": job_id, "expected_attempt": attempt, **_value_params(values)}
        result = self.session.execute(query, params)
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    def claim(
        self,
        job_id: str,
        *,
        statuses: Collection[str],
        expired_lease_statuses: Collection[str],
        to_status: str,
        now: datetime,
        lease_until: datetime,
        worker: str,
        max_attempts: int,
    ) -> Row[Any] | None:
        """Move the job to `to_status` with attempt + 1 and a lease, when it is in one of
        `statuses` or in `expired_lease_statuses` with an expired lease and fewer than
        `max_attempts` attempts made. One round trip:
        returns the claimed row's CLAIMED columns, or None."""
        query = _claim_statement(tuple(statuses), tuple(expired_lease_statuses))
        params = {"job_id": job_id, "now": now, "to_status": to_status}
        params.update(lease_until=lease_until, worker=worker, max_attempts=max_attempts)
        return self.session.execute(query, params).first()

    def claim_many(
        self,
        job_ids: Collection[str],
        *,
        statuses: Collection[str],
        expired_lease_statuses: Collection[str],
        to_status: str,
        now: datetime,
        lease_until: datetime,
        worker: str,
        max_attempts: int,
    ) -> Sequence[Row[Any]]:
        """`claim` for many jobs in one statement: the claimed rows (CLAIMED columns), in
        no particular order; jobs it could not claim are absent."""
        query = _claim_many_statement(tuple(statuses), tuple(expired_lease_statuses))
        params = {"job_ids": list(job_ids), "now": now, "to_status": to_status}
        params.update(lease_until=lease_until, worker=worker, max_attempts=max_attempts)
        return self.session.execute(query, params).all()

    def update_many_where(
        self,
        updates: Sequence[tuple[str, int, dict[str, Any]]],
        *,
        statuses: Collection[str],
    ) -> int | None:
        """`update_where` for many (job_id, attempt, values) at once, every values dict with
        the same keys: one executemany. The number of rows matched, or None where the
        driver cannot count an executemany (the caller then checks row by row)."""
        if not updates:
            return 0
        keys = tuple(sorted(updates[0][2]))
        query = _update_many_statement(tuple(statuses), keys)
        params = [
            {"job_id": job_id, "expected_attempt": attempt, **_value_params(values)}
            for job_id, attempt, values in updates
        ]
        result = self.session.execute(query, params)
        assert isinstance(result, CursorResult)
        if not result.dialect.supports_sane_multi_rowcount:
            return None
        return result.rowcount

    def find_states(self, job_ids: Collection[str]) -> dict[str, tuple[str, int]]:
        """(status, attempt) of each job found, by id."""
        query = select(JobRow.id, JobRow.status, JobRow.attempt).where(JobRow.id.in_(job_ids))
        return {row.id: (row.status, row.attempt) for row in self.session.execute(query)}


# The hot-path statements are built once per shape and reused: building a SQLAlchemy
# expression costs more than running the statement on SQLite. They are Core statements
# on the table, so the session has no ORM objects to synchronise.
JOBS: Table = JobRow.__table__  # type: ignore[assignment]


def _value_params(values: dict[str, Any]) -> dict[str, Any]:
    return {f"v_{key}": value for key, value in values.items()}


@lru_cache(maxsize=128)
def _update_statement(statuses: tuple[str, ...], with_attempt: bool, keys: tuple[str, ...]) -> Any:
    query = update(JOBS).where(JOBS.c.id == bindparam("job_id"), JOBS.c.status.in_(statuses))
    if with_attempt:
        query = query.where(JOBS.c.attempt == bindparam("expected_attempt"))
    return query.values({key: bindparam(f"v_{key}") for key in keys})


@lru_cache(maxsize=32)
def _update_many_statement(statuses: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    """`_update_statement` with the statuses inline: an executemany takes no expanding IN."""
    allowed = JOBS.c.status.in_([literal(status) for status in statuses])
    query = update(JOBS).where(JOBS.c.id == bindparam("job_id"), allowed)
    query = query.where(JOBS.c.attempt == bindparam("expected_attempt"))
    return query.values({key: bindparam(f"v_{key}") for key in keys})


# What a claim returns: everything a worker needs to run the job.
CLAIMED = (
    JOBS.c.id,
    JOBS.c.kind,
    JOBS.c.tenant_id,
    JOBS.c.attempt,
    JOBS.c.spec,
    JOBS.c.parent_id,
    JOBS.c.priority,
    JOBS.c.created_at,
)


@lru_cache(maxsize=16)
def _claim_statement(statuses: tuple[str, ...], expired: tuple[str, ...]) -> Any:
    now: BindParameter[datetime] = bindparam("now")
    lease_expired = _taken_over(expired, now)
    return (
        update(JOBS)
        .where(JOBS.c.id == bindparam("job_id"), or_(JOBS.c.status.in_(statuses), lease_expired))
        .values(_claimed_values(now))
        .returning(*CLAIMED)
    )


@lru_cache(maxsize=16)
def _claim_many_statement(statuses: tuple[str, ...], expired: tuple[str, ...]) -> Any:
    now: BindParameter[datetime] = bindparam("now")
    lease_expired = _taken_over(expired, now)
    wanted = JOBS.c.id.in_(bindparam("job_ids", expanding=True))
    return (
        update(JOBS)
        .where(wanted, or_(JOBS.c.status.in_(statuses), lease_expired))
        .values(_claimed_values(now))
        .returning(*CLAIMED)
    )


def _taken_over(expired: tuple[str, ...], now: BindParameter[datetime]) -> Any:
    """A job whose lease ran out, with attempts left (at its last, the reconciler ends
    it worker_lost: a job that kills every worker must not loop)."""
    return and_(
        JOBS.c.status.in_(expired),
        JOBS.c.lease_expires_at < now,
        JOBS.c.attempt < bindparam("max_attempts"),
    )


def _claimed_values(now: BindParameter[datetime]) -> dict[str, Any]:
    """What a claim sets: the new status, attempt + 1, the lease, the worker."""
    return {
        "status": bindparam("to_status"),
        "attempt": JOBS.c.attempt + 1,
        "lease_expires_at": bindparam("lease_until"),
        "started_at": func.coalesce(JOBS.c.started_at, now),
        "worker": bindparam("worker"),
    }

"""Repositories: each takes a Session and never commits; the caller owns the transaction.

Status values are plain strings here: the state machine lives in `jobs`, which passes the
allowed source statuses into the conditional updates below.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Row, Update, and_, or_, select, update
from sqlalchemy.orm import Session

from storage.tables import ApiKeyRow, AuditEventRow, JobRow, TenantRow


@dataclass(frozen=True)
class JobPageQuery:
    tenant_id: str
    limit: int
    kind: str | None = None
    status: str | None = None
    # Keyset cursor: jobs strictly older than (created_at, id).
    before: tuple[datetime, str] | None = None


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

    def page(self, tenant_id: str, limit: int, before_id: int | None) -> Sequence[AuditEventRow]:
        query = select(AuditEventRow).where(AuditEventRow.tenant_id == tenant_id)
        if before_id is not None:
            query = query.where(AuditEventRow.id < before_id)
        return self.session.scalars(query.order_by(AuditEventRow.id.desc()).limit(limit)).all()

    def for_job(self, job_id: str) -> Sequence[AuditEventRow]:
        query = select(AuditEventRow).where(AuditEventRow.job_id == job_id)
        return self.session.scalars(query.order_by(AuditEventRow.id)).all()


class JobRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: JobRow) -> None:
        self.session.add(row)

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
        expired_lease_statuses: Collection[str] = (),
        now: datetime | None = None,
    ) -> bool:
        """One conditional UPDATE; True when the row matched. The basis of every transition.

        The row matches when its status is in `statuses`, or in `expired_lease_statuses`
        with a lease that expired before `now`; and, if given, its attempt is `attempt`.
        """
        query = _conditional_update(job_id, statuses, attempt, expired_lease_statuses, now)
        result = self.session.execute(query.values(**values))
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    def update_returning(
        self,
        job_id: str,
        *,
        statuses: Collection[str],
        values: dict[str, Any],
        returning: Sequence[Any],
        expired_lease_statuses: Collection[str] = (),
        now: datetime | None = None,
    ) -> Row[Any] | None:
        """`update_where` that returns the updated row's `returning` columns (one round trip)."""
        query = _conditional_update(job_id, statuses, None, expired_lease_statuses, now)
        return self.session.execute(query.values(**values).returning(*returning)).first()


def _conditional_update(
    job_id: str,
    statuses: Collection[str],
    attempt: int | None,
    expired_lease_statuses: Collection[str],
    now: datetime | None,
) -> Update:
    condition: ColumnElement[bool] = JobRow.status.in_(list(statuses))
    if expired_lease_statuses:
        assert now is not None, "expired_lease_statuses needs now"
        expired = and_(
            JobRow.status.in_(list(expired_lease_statuses)), JobRow.lease_expires_at < now
        )
        condition = or_(condition, expired)
    query = update(JobRow).where(JobRow.id == job_id, condition)
    if attempt is not None:
        query = query.where(JobRow.attempt == attempt)
    # Plain SQL: no ORM objects to synchronise, which is most of an ORM update's cost.
    return query.execution_options(synchronize_session=False)

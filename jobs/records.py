"""Public views of jobs and audit events (what the API and CLI show)."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel

from storage.tables import AuditEventRow, JobRow

Item = TypeVar("Item", bound=BaseModel)


class CursorPage(BaseModel, Generic[Item]):
    """OpenAI's list object with `after` cursors: `first_id`, `last_id`, `has_more`."""

    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, views: Sequence[Item], has_more: bool) -> Self:
        ids: list[str] = [v.id for v in views]  # type: ignore[attr-defined]
        return cls(
            data=list(views),
            first_id=ids[0] if ids else None,
            last_id=ids[-1] if ids else None,
            has_more=has_more,
        )


class JobError(BaseModel):
    type: str
    message: str


class JobView(BaseModel):
    id: str
    kind: str
    status: str
    priority: int
    spec: dict[str, Any]  # PII-masked, as stored
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    cancel_requested_at: datetime | None
    finished_at: datetime | None
    # Long jobs (index) report progress while they run; sub-jobs name their parent.
    progress: dict[str, Any] | None = None
    parent_id: str | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> "JobView":
        error = None
        if row.error_type is not None:
            error = JobError(type=row.error_type, message=row.error_message or "")
        return cls(
            id=row.id,
            kind=row.kind,
            status=row.status,
            priority=row.priority,
            spec=row.spec,
            result=row.result,
            error=error,
            attempts=row.attempt,
            idempotency_key=row.idempotency_key,
            created_at=row.created_at,
            started_at=row.started_at,
            cancel_requested_at=row.cancel_requested_at,
            finished_at=row.finished_at,
            progress=row.progress,
            parent_id=row.parent_id,
        )


class JobPage(BaseModel):
    data: list[JobView]
    next_cursor: str | None


class AuditView(BaseModel):
    id: int
    job_id: str | None
    actor: str
    action: str
    masked_input: dict[str, Any]
    entity_counts: dict[str, int]
    policy_version: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: AuditEventRow) -> "AuditView":
        return cls(
            id=row.id,
            job_id=row.job_id,
            actor=row.actor,
            action=row.action,
            masked_input=row.masked_input,
            entity_counts=row.entity_counts,
            policy_version=row.policy_version,
            created_at=row.created_at,
        )


class AuditPage(BaseModel):
    data: list[AuditView]
    next_cursor: str | None

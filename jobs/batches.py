"""OpenAI-compatible batches, the producer side: create, retrieve, list, cancel.

A batch is a seekq job of kind `batch`; its OpenAI id is `batch_<job uuid hex>`. The
input file is checked when it is uploaded (`purpose=batch`: every line, with line
numbers); creating the batch checks that it is a batch file of this tenant for the
batch's endpoint. Each line's body is checked by the batch job itself, so a bad line
fails alone and lands in the error file.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.batch_specs import (
    WINDOW_PATTERN,
    BatchEndpoint,
    BatchResult,
    job_id_of,
    openai_batch_id,
    window_seconds,
)
from jobs.catalog import JobKind
from jobs.errors import JobNotFoundError, SpecError
from jobs.files import FileService
from jobs.keys import Principal
from jobs.records import CursorPage, JobView
from jobs.service import JobService
from jobs.status import JobStatus

BATCH_PRIORITY = 2  # below interactive requests (OpenAI routes submit at a higher one)
MAX_PAGE = 100


class BatchCreate(BaseModel):
    """`client.batches.create(...)`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: Annotated[str, Field(min_length=1, max_length=64)]
    endpoint: BatchEndpoint
    completion_window: Annotated[str, Field(pattern=WINDOW_PATTERN, max_length=8)] = Field(
        description='OpenAI: "24h"; seekq also takes e.g. "90s", "10m", "2h" (at most 24h)'
    )
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchView(BaseModel):
    """OpenAI's batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None

    @classmethod
    def from_job(cls, job: JobView) -> "BatchView":
        spec, progress = job.spec, job.progress or {}
        result = BatchResult.from_stored(job.result) if job.result else None
        status = _status(job, progress, result)
        created = _unix(job.created_at)
        finished = _unix(job.finished_at) if job.finished_at else None
        counts = result or progress
        return cls(
            id=openai_batch_id(job.id),
            endpoint=spec["endpoint"],
            errors=_errors(job),
            input_file_id=spec["input_file_id"],
            completion_window=spec.get("completion_window", "24h"),
            status=status,
            output_file_id=result.output_file_id if result else None,
            error_file_id=result.error_file_id if result else None,
            created_at=created,
            in_progress_at=(result.in_progress_at if result else progress.get("in_progress_at")),
            expires_at=created + int(spec["completion_window_s"]),
            finalizing_at=(result.finalizing_at if result else progress.get("finalizing_at")),
            completed_at=finished if status == "completed" else None,
            failed_at=finished if status == "failed" else None,
            expired_at=finished if status == "expired" else None,
            cancelling_at=_unix(job.cancel_requested_at) if job.cancel_requested_at else None,
            cancelled_at=finished if status == "cancelled" else None,
            request_counts=RequestCounts(
                total=_count(counts, "total"),
                completed=_count(counts, "completed"),
                failed=_count(counts, "failed"),
            ),
            metadata=spec.get("metadata") or None,
        )


class BatchPage(CursorPage[BatchView]):
    """`client.batches.list()`."""


def _status(job: JobView, progress: dict[str, Any], result: BatchResult | None) -> str:
    if job.status == JobStatus.QUEUED.value:
        return "validating"
    if job.status in (JobStatus.RUNNING.value, JobStatus.CANCELLING.value):
        if job.status == JobStatus.CANCELLING.value:
            return "cancelling"
        return str(progress.get("phase", "validating"))
    if job.status == JobStatus.FAILED.value:
        return "failed"
    if result is not None:
        return result.outcome
    return "cancelled" if job.status == JobStatus.CANCELLED.value else "failed"


def _errors(job: JobView) -> dict[str, Any] | None:
    if job.error is None:
        return None
    error = {"code": job.error.type, "message": job.error.message, "param": None, "line": None}
    return {"object": "list", "data": [error]}


def _count(source: Any, name: str) -> int:
    value = getattr(source, name, None) if isinstance(source, BaseModel) else source.get(name)
    return int(value or 0)


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


class BatchService:
    def __init__(self, jobs: JobService, files: FileService) -> None:
        self.jobs = jobs
        self.files = files

    def create(
        self, who: Principal, body: BatchCreate, idempotency_key: str | None = None
    ) -> BatchView:
        try:
            seconds = window_seconds(body.completion_window)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        endpoint, tokens = self.files.batch_input(who.tenant_id, body.input_file_id)
        if endpoint != body.endpoint:
            raise SpecError(
                f"endpoint: the input file's requests call {endpoint}, not {body.endpoint}"
            )
        spec: dict[str, Any] = {
            "input_file_id": body.input_file_id,
            "endpoint": body.endpoint,
            "completion_window_s": seconds,
            "completion_window": body.completion_window,
        }
        if body.metadata:
            spec["metadata"] = body.metadata
        submitted = self.jobs.submit(
            who,
            JobKind.BATCH.value,
            spec,
            priority=BATCH_PRIORITY,
            idempotency_key=idempotency_key,
            tokens=tokens,
        )
        return BatchView.from_job(submitted.job)

    def get(self, who: Principal, batch_id: str) -> BatchView:
        return BatchView.from_job(self._job(who, batch_id))

    def page(self, who: Principal, after: str | None, limit: int) -> BatchPage:
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise SpecError(f"limit: must be an integer from 1 to {MAX_PAGE}")
        cursor = None
        if after is not None:
            anchor = self._job(who, after)
            cursor = self.jobs.job_cursor(anchor)
        page = self.jobs.list_jobs(who, kind=JobKind.BATCH.value, limit=limit, cursor=cursor)
        views = [BatchView.from_job(job) for job in page.data]
        return BatchPage.of(views, has_more=page.next_cursor is not None)

    def cancel(self, who: Principal, batch_id: str) -> BatchView:
        """A batch still validating ends at once; a running one stops taking new lines,
        lets the lines in flight finish, and delivers a partial output file."""
        job = self._job(who, batch_id)
        return BatchView.from_job(self.jobs.cancel(who, job.id))

    def _job(self, who: Principal, batch_id: str) -> JobView:
        job = self.jobs.get(who, job_id_of(batch_id))
        if job.kind != JobKind.BATCH.value:
            raise JobNotFoundError("no such batch")
        return job

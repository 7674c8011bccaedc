"""The native job API: submit, read, list, cancel; and the tenant's audit trail."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import PrincipalDep, ServiceDep, SettingsDep
from api_gateway.routing import CheckedRoute
from api_gateway.schemas import JobCreate
from api_gateway.streaming import SSE_HEADERS, JobStream, StreamRedisDep, native_events
from api_gateway.waiting import wait_for_job
from jobs.errors import SpecError
from jobs.records import AuditPage, JobPage, JobView

router = APIRouter(prefix="/v1", tags=["jobs"], route_class=CheckedRoute)

MAX_WAIT_S = 60.0


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
def submit_job(
    body: JobCreate,
    who: PrincipalDep,
    service: ServiceDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobView:
    """Queue a job. Retrying with the same idempotency key returns the original job (200)."""
    key = body.idempotency_key or idempotency_key
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise SpecError("idempotency_key: the body and the Idempotency-Key header differ")
    submitted = service.submit(
        who, body.kind, body.spec, priority=body.priority, idempotency_key=key
    )
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
    return submitted.job


@router.get("/jobs/{job_id}", response_model=JobView)
async def get_job(
    job_id: str,
    who: PrincipalDep,
    service: ServiceDep,
    redis: StreamRedisDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long-poll seconds")] = 0,
) -> JobView:
    """A job of the caller's tenant; `wait` blocks until it is terminal or the time passes."""
    if wait > 0:
        return await wait_for_job(redis, service, who, job_id, wait)
    return await run_in_threadpool(service.get, who, job_id)


EVENTS_DOC = (
    'text/event-stream: `event: token` with `data: {"text": ...}` for each piece of '
    "generated text, then `event: done` with the job (any final status); `event: error` "
    "if the job is not finished within the gateway's wait timeout."
)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": EVENTS_DOC,
        }
    },
)
def job_events(
    job_id: str,
    who: PrincipalDep,
    service: ServiceDep,
    settings: SettingsDep,
    redis: StreamRedisDep,
) -> StreamingResponse:
    """A job's generated text as it is made, then the finished job. Works for any job: one
    that does not stream sends its whole text (if any) once it is finished."""
    service.get(who, job_id)  # an unknown job (or another tenant's) is a 404, not a stream
    stream = JobStream(redis, service, who, job_id, settings.wait_timeout_s)
    return StreamingResponse(
        native_events(stream), media_type="text/event-stream", headers=SSE_HEADERS
    )


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    who: PrincipalDep,
    service: ServiceDep,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    status_: Annotated[str | None, Query(alias="status", max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    parent_id: Annotated[
        str | None, Query(max_length=36, description="list this job's sub-jobs instead")
    ] = None,
) -> JobPage:
    """The caller's jobs, newest first; pass `next_cursor` back as `cursor` for more.
    Sub-jobs (an index job's embed batches) are listed only under their `parent_id`."""
    return service.list_jobs(
        who, kind=kind, status=status_, limit=limit, cursor=cursor, parent_id=parent_id
    )


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
def cancel_job(job_id: str, who: PrincipalDep, service: ServiceDep) -> JobView:
    """Cancel a queued job at once, or ask a running one to stop (status `cancelling`)."""
    return service.cancel(who, job_id)


@router.get("/audit", response_model=AuditPage, tags=["audit"])
def list_audit(
    who: PrincipalDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> AuditPage:
    """The caller's tenant's audit events (PII-masked inputs), newest first."""
    return service.audit(who, limit=limit, cursor=cursor)

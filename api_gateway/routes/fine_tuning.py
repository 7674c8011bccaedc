"""OpenAI-compatible fine-tuning: create, list, retrieve, cancel, list events.

The official `openai` package drives these unchanged (`client.fine_tuning.jobs.*`).
The training file is checked in full before the job is queued: a bad line, an example
longer than the model's context, too few examples — 400 with each line named.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import ContextDep, PrincipalDep
from api_gateway.routing import CheckedRoute
from jobs.finetune_records import (
    FineTuneCreate,
    FineTuningEventPage,
    FineTuningJobPage,
    FineTuningJobView,
)

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"], route_class=CheckedRoute)

JobId = Annotated[str, "ftjob-<32 hex>"]


@router.post("/jobs", response_model=FineTuningJobView)
async def create_fine_tuning_job(
    body: FineTuneCreate,
    who: PrincipalDep,
    context: ContextDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> FineTuningJobView:
    """Queue a LoRA fine-tune of `model` on a `fine-tune` file; the adapter becomes the
    model `<model>:<suffix>` when the job succeeds."""
    return await run_in_threadpool(context.finetunes.create, who, body, idempotency_key)


@router.get("/jobs", response_model=FineTuningJobPage)
async def list_fine_tuning_jobs(
    who: PrincipalDep,
    context: ContextDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FineTuningJobPage:
    return await run_in_threadpool(context.finetunes.page, who, after, limit)


@router.get("/jobs/{fine_tuning_job_id}", response_model=FineTuningJobView)
async def retrieve_fine_tuning_job(
    fine_tuning_job_id: str, who: PrincipalDep, context: ContextDep
) -> FineTuningJobView:
    return await run_in_threadpool(context.finetunes.get, who, fine_tuning_job_id)


@router.post("/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJobView)
async def cancel_fine_tuning_job(
    fine_tuning_job_id: str, who: PrincipalDep, context: ContextDep
) -> FineTuningJobView:
    """A queued job ends at once; a running one stops within one training step and keeps
    its last checkpoint."""
    return await run_in_threadpool(context.finetunes.cancel, who, fine_tuning_job_id)


@router.get("/jobs/{fine_tuning_job_id}/events", response_model=FineTuningEventPage)
async def list_fine_tuning_events(
    fine_tuning_job_id: str,
    who: PrincipalDep,
    context: ContextDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FineTuningEventPage:
    """Newest first: steps (loss, learning rate, validation loss), checkpoints, resumes."""
    return await run_in_threadpool(context.finetunes.events, who, fine_tuning_job_id, after, limit)

"""OpenAI-compatible batches: create, retrieve, list, cancel.

The official `openai` package drives these unchanged (`client.batches.*`); outputs are
read with `client.files.content(output_file_id)`.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import ContextDep, PrincipalDep
from api_gateway.routing import CheckedRoute
from jobs.batches import BatchCreate, BatchPage, BatchView

router = APIRouter(prefix="/v1/batches", tags=["batches"], route_class=CheckedRoute)


@router.post("", response_model=BatchView)
async def create_batch(
    body: BatchCreate,
    who: PrincipalDep,
    context: ContextDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> BatchView:
    """Run every request of a `batch` input file (uploaded with `purpose=batch`) as its own
    job; the results come back as an output file and an error file."""
    return await run_in_threadpool(context.batches.create, who, body, idempotency_key)


@router.get("", response_model=BatchPage)
async def list_batches(
    who: PrincipalDep,
    context: ContextDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchPage:
    return await run_in_threadpool(context.batches.page, who, after, limit)


@router.get("/{batch_id}", response_model=BatchView)
async def retrieve_batch(batch_id: str, who: PrincipalDep, context: ContextDep) -> BatchView:
    return await run_in_threadpool(context.batches.get, who, batch_id)


@router.post("/{batch_id}/cancel", response_model=BatchView)
async def cancel_batch(batch_id: str, who: PrincipalDep, context: ContextDep) -> BatchView:
    """Lines still queued are cancelled; lines running finish; the output file holds what
    finished (a partial output file), the error file the rest (`batch_cancelled`)."""
    return await run_in_threadpool(context.batches.cancel, who, batch_id)

"""OpenAI-compatible webhook endpoints (`client.webhooks.*`) and their deliveries.

Terminal events of the tenant's batches (`batch.completed`, ...), fine-tunes
(`fine_tuning.job.succeeded`, ...) and other top-level jobs (`job.succeeded`, ...) are
POSTed to its endpoints, signed as Standard Webhooks, retried with backoff; every
attempt is recorded (`GET /v1/webhook_endpoints/{id}/deliveries`).
"""

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import ContextDep, PrincipalDep
from api_gateway.routing import CheckedRoute
from jobs.webhook_endpoints import (
    DeletedEndpoint,
    DeliveryPage,
    EndpointCreate,
    EndpointPage,
    EndpointUpdate,
    EndpointView,
    EndpointWithSecret,
    EventTypeList,
    RotateSecret,
    TestRequest,
    TestResult,
)
from jobs.webhooks import EVENT_TYPES

router = APIRouter(tags=["webhooks"], route_class=CheckedRoute)
PREFIX = "/v1/webhook_endpoints"
After = Annotated[str | None, Query(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post(PREFIX, response_model=EndpointWithSecret)
async def create_endpoint(
    body: EndpointCreate, who: PrincipalDep, context: ContextDep
) -> EndpointWithSecret:
    """Register a URL for the listed event types. The signing secret is in this answer
    only. The URL must resolve to public addresses (or to a network the operator allowed
    with SEEKQ_WEBHOOK_ALLOWED_NETWORKS) and use https (unless SEEKQ_WEBHOOK_ALLOW_HTTP)."""
    return await run_in_threadpool(context.webhooks.create, who, body)


@router.get(PREFIX, response_model=EndpointPage)
async def list_endpoints(
    who: PrincipalDep, context: ContextDep, after: After = None, limit: Limit = 20
) -> EndpointPage:
    return await run_in_threadpool(context.webhooks.page, who, after, limit)


@router.get(PREFIX + "/{endpoint_id}", response_model=EndpointView)
async def retrieve_endpoint(
    endpoint_id: str, who: PrincipalDep, context: ContextDep
) -> EndpointView:
    return await run_in_threadpool(context.webhooks.get, who, endpoint_id)


@router.post(PREFIX + "/{endpoint_id}", response_model=EndpointView)
async def update_endpoint(
    endpoint_id: str, body: EndpointUpdate, who: PrincipalDep, context: ContextDep
) -> EndpointView:
    return await run_in_threadpool(context.webhooks.update, who, endpoint_id, body)


@router.delete(PREFIX + "/{endpoint_id}", response_model=DeletedEndpoint)
async def delete_endpoint(
    endpoint_id: str, who: PrincipalDep, context: ContextDep
) -> DeletedEndpoint:
    """The endpoint receives nothing more; deliveries still pending for it fail."""
    return await run_in_threadpool(context.webhooks.delete, who, endpoint_id)


@router.post(PREFIX + "/{endpoint_id}/rotate_secret", response_model=EndpointWithSecret)
async def rotate_secret(
    endpoint_id: str, who: PrincipalDep, context: ContextDep, body: RotateSecret | None = None
) -> EndpointWithSecret:
    """A new signing secret; with `keep_old_secret_active_for_24_hours` deliveries carry
    signatures under both secrets for a day."""
    body = body or RotateSecret()
    return await run_in_threadpool(context.webhooks.rotate_secret, who, endpoint_id, body)


@router.post(PREFIX + "/{endpoint_id}/test", response_model=TestResult)
async def test_endpoint(
    endpoint_id: str, body: TestRequest, who: PrincipalDep, context: ContextDep
) -> TestResult:
    """POST a signed sample event now; the answer's status code comes back (502 when the
    endpoint could not be reached at all)."""
    return await run_in_threadpool(context.webhooks.test, who, endpoint_id, body)


@router.get(PREFIX + "/{endpoint_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    endpoint_id: str, who: PrincipalDep, context: ContextDep, after: After = None, limit: Limit = 20
) -> DeliveryPage:
    """Every event sent (or being sent) to the endpoint, newest first, with its status,
    attempts and the last attempt's outcome."""
    return await run_in_threadpool(context.webhooks.deliveries, who, endpoint_id, after, limit)


@router.get("/v1/webhook_event_types", response_model=EventTypeList)
async def list_event_types(who: PrincipalDep) -> EventTypeList:
    return EventTypeList(data=list(EVENT_TYPES))

"""OpenAI-compatible endpoints: /v1/embeddings, /v1/completions, /v1/chat/completions and
/v1/models.

Each call submits a job like any other (masked, audited, queued) and waits for it, or, with
`stream: true`, streams its text as OpenAI's server-sent events, so the official `openai`
package works unchanged. Response ids end in the job id (`chatcmpl-<job id>`).
"""

import functools
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import ContextDep, PrincipalDep, ServiceDep, SettingsDep
from api_gateway.routing import CheckedRoute
from api_gateway.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    GenerationOptions,
    ModelCard,
    ModelDeleted,
    ModelList,
)
from api_gateway.streaming import (
    SSE_HEADERS,
    ChunkFormat,
    JobStream,
    StreamRedisDep,
    openai_events,
)
from api_gateway.waiting import wait_for_job
from jobs.adapters import AdapterView
from jobs.catalog import JobKind
from jobs.context import JobsContext
from jobs.errors import SpecError
from jobs.indexes import embedding_dimensions
from jobs.keys import Principal
from jobs.openai_formats import (
    chat_completion_response,
    completion_response,
    created_of,
    embed_result_of,
    embed_spec,
    embeddings_response,
    generate_result_of,
)
from jobs.records import JobView
from jobs.registry import ModelEntry, ModelKind, resolve_source, split_model
from jobs.service import JobService

router = APIRouter(prefix="/v1", tags=["openai"], route_class=CheckedRoute)

# OpenAI-compatible calls are interactive: ahead of batch work of the default priority.
INTERACTIVE_PRIORITY = 8
STREAM_DOC = (
    "With `stream: true`: text/event-stream of `data: <chunk JSON>` lines "
    "(chat.completion.chunk or text_completion), ending with `data: [DONE]`; a failed, "
    'cancelled or late job ends with `data: {"error": {...}}` instead.'
)
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": STREAM_DOC,
    }
}


@router.post("/embeddings", response_model=EmbeddingsResponse)
async def create_embeddings(
    body: EmbeddingsRequest,
    context: ContextDep,
    who: PrincipalDep,
    service: ServiceDep,
    settings: SettingsDep,
    redis: StreamRedisDep,
) -> EmbeddingsResponse:
    if body.dimensions is not None:
        await run_in_threadpool(_check_dimensions, context, body.model, body.dimensions)
    job = await _submit(service, who, JobKind.EMBED, embed_spec(body))
    job = await wait_for_job(redis, service, who, job.id, settings.wait_timeout_s)
    result = embed_result_of(job)
    return embeddings_response(body.model, result, body.encoding_format, body.dimensions)


@router.post("/completions", response_model=Completion, responses=STREAM_RESPONSES)
async def create_completion(
    body: CompletionRequest,
    who: PrincipalDep,
    service: ServiceDep,
    settings: SettingsDep,
    redis: StreamRedisDep,
) -> Completion | StreamingResponse:
    """Text completion of one prompt. A cancelled job answers 409 `job_cancelled`."""
    job = await _submit(service, who, JobKind.GENERATE, body.generate_spec())
    if body.stream:
        stream = JobStream(redis, service, who, job.id, settings.wait_timeout_s)
        return _streaming(stream, _format(job, body, chat=False))
    result = generate_result_of(
        await wait_for_job(redis, service, who, job.id, settings.wait_timeout_s)
    )
    return completion_response(job, body.model, result)


@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest,
    who: PrincipalDep,
    service: ServiceDep,
    settings: SettingsDep,
    redis: StreamRedisDep,
) -> ChatCompletion | StreamingResponse:
    """Chat completion through the model's chat template. A cancelled job answers 409
    `job_cancelled`."""
    job = await _submit(service, who, JobKind.GENERATE, body.generate_spec())
    if body.stream:
        stream = JobStream(redis, service, who, job.id, settings.wait_timeout_s)
        return _streaming(stream, _format(job, body, chat=True))
    result = generate_result_of(
        await wait_for_job(redis, service, who, job.id, settings.wait_timeout_s)
    )
    return chat_completion_response(job, body.model, result)


def _check_dimensions(context: JobsContext, model: str, dimensions: int) -> None:
    """seekq does not shorten vectors: a size other than the model's is refused before
    any job is queued (the answer would refuse it anyway, after the work)."""
    entry = context.models.get(model, ModelKind.EMBEDDING)
    made = embedding_dimensions(resolve_source(entry.source))
    if dimensions != made:
        raise SpecError(f"dimensions: model '{model}' only produces {made}")


async def _submit(
    service: JobService, who: Principal, kind: JobKind, spec: dict[str, Any]
) -> JobView:
    """Submit in the threadpool (SQL and the broker are synchronous), at interactive
    priority. The call waits for the job, so a broker outage answers 503 now (the job
    ends failed) instead of leaving the job to run after the caller gave up."""
    submitted = await run_in_threadpool(
        functools.partial(service.submit, priority=INTERACTIVE_PRIORITY, require_dispatch=True),
        who,
        kind.value,
        spec,
    )
    return submitted.job


def _streaming(stream: JobStream, fmt: ChunkFormat) -> StreamingResponse:
    events = openai_events(stream, fmt)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def _format(job: JobView, body: GenerationOptions, *, chat: bool) -> ChunkFormat:
    prefix = "chatcmpl" if chat else "cmpl"
    return ChunkFormat(chat, f"{prefix}-{job.id}", created_of(job), body.model, body.include_usage)


@router.get("/models", response_model=ModelList)
def list_models(context: ContextDep, who: PrincipalDep) -> ModelList:
    """The registered models, then this tenant's fine-tuned adapters (`<base>:<name>`)."""
    cards: list[ModelCard | AdapterView] = [_card(e) for e in context.models.all()]
    return ModelList(data=cards + list(context.adapters.all(who)))


@router.get("/models/{model_id}", response_model=ModelCard | AdapterView)
def get_model(model_id: str, context: ContextDep, who: PrincipalDep) -> ModelCard | AdapterView:
    if split_model(model_id)[1] is not None:
        return AdapterView.from_row(context.adapters.get(who.tenant_id, model_id), who.tenant_name)
    return _card(context.models.get(model_id))


@router.delete("/models/{model_id}", response_model=ModelDeleted)
def delete_model(model_id: str, context: ContextDep, who: PrincipalDep) -> ModelDeleted:
    """Delete a fine-tuned adapter of this tenant (base models are the operator's)."""
    if split_model(model_id)[1] is None:
        raise SpecError("only fine-tuned models (<base>:<name>) can be deleted")
    context.adapters.delete(who, model_id)
    return ModelDeleted(id=model_id)


def _card(entry: ModelEntry) -> ModelCard:
    return ModelCard(id=entry.name, owned_by=entry.owned_by)

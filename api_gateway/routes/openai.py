"""OpenAI-compatible endpoints: /v1/embeddings and /v1/models.

/v1/embeddings submits an embed job like any other (masked, audited, queued) and waits
for it, so the official `openai` package works unchanged.
"""

from fastapi import APIRouter

from api_gateway.deps import ContextDep, PrincipalDep, ServiceDep, SettingsDep
from api_gateway.schemas import (
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelList,
    Usage,
)
from jobs.catalog import JobKind
from jobs.errors import JobFailedError, JobTimeoutError, SpecError
from jobs.records import JobView
from jobs.registry import ModelEntry
from jobs.specs import EmbedResult, decode_vector
from jobs.status import JobStatus

router = APIRouter(prefix="/v1", tags=["openai"])

# OpenAI-compatible calls are interactive: ahead of batch work of the default priority.
INTERACTIVE_PRIORITY = 8


@router.post("/embeddings", response_model=EmbeddingsResponse)
def create_embeddings(
    body: EmbeddingsRequest, who: PrincipalDep, service: ServiceDep, settings: SettingsDep
) -> EmbeddingsResponse:
    texts = [body.input] if isinstance(body.input, str) else body.input
    spec = {"model": body.model, "input": texts}
    job = service.submit(who, JobKind.EMBED.value, spec, priority=INTERACTIVE_PRIORITY).job
    job = service.wait(who, job.id, settings.wait_timeout_s)
    result = _result_of(job)
    if body.dimensions is not None and body.dimensions != result.dimensions:
        raise SpecError(f"dimensions: model '{body.model}' only produces {result.dimensions}")
    data = [
        EmbeddingData(index=i, embedding=_encode(encoded, body.encoding_format))
        for i, encoded in enumerate(result.vectors_base64)
    ]
    tokens = result.prompt_tokens
    return EmbeddingsResponse(
        data=data, model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _result_of(job: JobView) -> EmbedResult:
    if job.status == JobStatus.SUCCEEDED.value and job.result is not None:
        return EmbedResult.model_validate(job.result)
    if job.status == JobStatus.FAILED.value:
        error_type = job.error.type if job.error else "unknown"
        raise JobFailedError(f"job {job.id} failed ({error_type})")
    raise JobTimeoutError(f"job {job.id} is still {job.status}; poll GET /v1/jobs/{job.id}")


def _encode(encoded: str, encoding_format: str) -> list[float] | str:
    """Results are stored as OpenAI's base64 already; floats are decoded on request."""
    return encoded if encoding_format == "base64" else decode_vector(encoded)


@router.get("/models", response_model=ModelList)
def list_models(context: ContextDep, _: PrincipalDep) -> ModelList:
    return ModelList(data=[_card(entry) for entry in context.models.all()])


@router.get("/models/{model_id}", response_model=ModelCard)
def get_model(model_id: str, context: ContextDep, _: PrincipalDep) -> ModelCard:
    return _card(context.models.get(model_id))


def _card(entry: ModelEntry) -> ModelCard:
    return ModelCard(id=entry.name, owned_by=entry.owned_by)

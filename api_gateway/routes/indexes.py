"""Vector indexes: create / read / list / delete, their documents, the index jobs that
change them (202 with the job), and search (a `search` job the call waits for)."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, status
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import IndexesDep, PrincipalDep, ServiceDep, SettingsDep
from api_gateway.routing import CheckedRoute
from api_gateway.schemas import Strict
from api_gateway.streaming import StreamRedisDep
from api_gateway.waiting import wait_for_job
from jobs.errors import IndexNotFoundError, JobFailedError, JobTimeoutError
from jobs.index_records import IndexDeleted, IndexDocumentPage, IndexList, IndexView
from jobs.index_specs import (
    MAX_INDEX_DOCUMENTS,
    MAX_K,
    DocId,
    DocumentInput,
    IndexCreate,
    SearchFilter,
    SearchResult,
)
from jobs.records import JobView
from jobs.status import JobStatus

router = APIRouter(prefix="/v1/indexes", tags=["indexes"], route_class=CheckedRoute)


# Strict like every body: `true` is not a k, "5" is not a number.
class DocumentsAdd(Strict):
    documents: list[DocumentInput] = Field(min_length=1, max_length=MAX_INDEX_DOCUMENTS)


class DocumentsDelete(Strict):
    ids: list[DocId] = Field(min_length=1, max_length=MAX_INDEX_DOCUMENTS)


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=4096)
    k: int = Field(default=5, ge=1, le=MAX_K)
    filter: SearchFilter = Field(default_factory=dict)


IdempotencyKey = Annotated[str | None, Header(max_length=255)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=IndexView)
async def create_index(body: IndexCreate, who: PrincipalDep, indexes: IndexesDep) -> IndexView:
    """Create an empty index; its model, type and metric are fixed from now on."""
    return await run_in_threadpool(indexes.create, who, body)


@router.get("", response_model=IndexList)
async def list_indexes(who: PrincipalDep, indexes: IndexesDep) -> IndexList:
    return IndexList(data=await run_in_threadpool(indexes.all, who))


@router.get("/{name}", response_model=IndexView)
async def get_index(name: str, who: PrincipalDep, indexes: IndexesDep) -> IndexView:
    return await run_in_threadpool(indexes.get, who, name)


@router.delete("/{name}", response_model=IndexDeleted)
async def delete_index(name: str, who: PrincipalDep, indexes: IndexesDep) -> IndexDeleted:
    """Drop the index with its documents, chunks and files (409 while a job writes it)."""
    await run_in_threadpool(indexes.delete, who, name)
    return IndexDeleted(name=name)


@router.get("/{name}/documents", response_model=IndexDocumentPage)
async def list_documents(
    name: str,
    who: PrincipalDep,
    indexes: IndexesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> IndexDocumentPage:
    return await run_in_threadpool(indexes.documents, who, name, limit, cursor)


@router.post("/{name}/documents", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
async def add_documents(
    name: str,
    body: DocumentsAdd,
    who: PrincipalDep,
    indexes: IndexesDep,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    """Add or replace documents (an index job): unchanged ones are skipped."""
    spec = {
        "action": "upsert",
        "documents": [d.model_dump(exclude_none=True) for d in body.documents],
    }
    return await _change(indexes, who, name, spec, idempotency_key)


@router.post(
    "/{name}/documents/delete", status_code=status.HTTP_202_ACCEPTED, response_model=JobView
)
async def delete_documents(
    name: str,
    body: DocumentsDelete,
    who: PrincipalDep,
    indexes: IndexesDep,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    """Delete documents by id (an index job)."""
    return await _change(
        indexes, who, name, {"action": "delete", "delete": body.ids}, idempotency_key
    )


@router.post("/{name}/rebuild", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
async def rebuild_index(
    name: str, who: PrincipalDep, indexes: IndexesDep, idempotency_key: IdempotencyKey = None
) -> JobView:
    """Rebuild the index from its live vectors (drops HNSW tombstones, retrains IVF)."""
    return await _change(indexes, who, name, {"action": "rebuild"}, idempotency_key)


@router.post("/{name}/search", response_model=SearchResult)
async def search(
    name: str,
    body: SearchRequest,
    who: PrincipalDep,
    indexes: IndexesDep,
    service: ServiceDep,
    settings: SettingsDep,
    redis: StreamRedisDep,
) -> SearchResult:
    """The k chunks closest to the query (a `search` job on the fast path, waited for)."""
    submitted = await run_in_threadpool(indexes.search, who, name, body.model_dump())
    job = await wait_for_job(redis, service, who, submitted.job.id, settings.wait_timeout_s)
    return _search_result(job)


async def _change(
    indexes: Any, who: Any, name: str, spec: dict[str, Any], idempotency_key: str | None
) -> JobView:
    submitted = await run_in_threadpool(indexes.change, who, name, spec, idempotency_key)
    return submitted.job  # type: ignore[no-any-return]


def _search_result(job: JobView) -> SearchResult:
    if job.status == JobStatus.SUCCEEDED.value and job.result is not None:
        return SearchResult.model_validate(job.result)
    if job.status == JobStatus.FAILED.value:
        error_type = job.error.type if job.error else "unknown"
        if error_type == IndexNotFoundError.__name__ and job.error is not None:
            raise IndexNotFoundError(job.error.message)
        raise JobFailedError(f"search job {job.id} failed ({error_type})")
    raise JobTimeoutError(f"search job {job.id} is still {job.status}; poll GET /v1/jobs/{job.id}")

"""The search job: query → embed → FAISS top-k → chunks from SQL, filtered and ranked.

FAISS is asked for more than k (`OVER_FETCH` times, more with a filter) and asked again
for more while filtering leaves fewer than k hits and the index holds more: chunks of
documents replaced after the served version was read, and chunks a filter drops, must not
shorten the answer. HNSW tombstones are skipped inside `VectorIndex.search` itself.
"""

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from jobs.errors import IndexNotFoundError
from jobs.index_specs import SearchHit, SearchResult, SearchSpec, SearchTiming
from jobs.indexes import index_prefix
from storage.index_repos import DocumentRepo
from storage.tables import IndexRow
from workers.backends.index_versions import IndexPointer, IndexVersions
from workers.pool import ModelPool
from workers.runners import RunningJob

OVER_FETCH = 2
FILTER_OVER_FETCH = 8
MAX_ROUNDS = 4


@dataclass(frozen=True)
class ServedIndex:
    id: str
    tenant_id: str
    model: str
    metric: str
    pointer: IndexPointer | None  # None: nothing indexed yet


_SERVED = select(
    IndexRow.id,
    IndexRow.tenant_id,
    IndexRow.model,
    IndexRow.metric,
    IndexRow.version,
    IndexRow.version_key,
    IndexRow.version_size,
    IndexRow.version_sha256,
)


def run_search(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    assert isinstance(spec, SearchSpec)
    assert pool.context is not None, "search jobs need the worker's jobs context"
    served = _served(pool, job.tenant_id, spec.index)
    started = time.perf_counter()
    embedder = pool.embedder(served.model)
    query = embedder.embed([spec.query], served.metric == "ip", job.should_stop).vectors
    embedded = time.perf_counter()
    hits, search_s = _ranked(pool, served, query, spec) if served.pointer else ([], 0.0)
    fetched = time.perf_counter()
    return SearchResult(
        index=spec.index,
        version=served.pointer.version if served.pointer else 0,
        model=served.model,
        metric=served.metric,  # type: ignore[arg-type]
        hits=hits,
        timing=SearchTiming(
            embed_ms=(embedded - started) * 1000,
            search_ms=search_s * 1000,
            fetch_ms=(fetched - embedded - search_s) * 1000,
        ),
    )


def _served(pool: ModelPool, tenant_id: str, name: str) -> ServedIndex:
    assert pool.context is not None
    query = _SERVED.where(IndexRow.tenant_id == tenant_id, IndexRow.name == name)
    with pool.context.sessions() as session:
        row = session.execute(query).first()
    if row is None:
        raise IndexNotFoundError(f"no index named '{name}'")
    pointer = None
    if row.version and row.version_key:
        pointer = IndexPointer(row.version, row.version_key, row.version_size, row.version_sha256)
    return ServedIndex(row.id, row.tenant_id, row.model, row.metric, pointer)


def _ranked(
    pool: ModelPool, served: ServedIndex, query: Any, spec: SearchSpec
) -> tuple[list[SearchHit], float]:
    assert pool.context is not None and served.pointer is not None
    context, pointer = pool.context, served.pointer
    prefix = index_prefix(served.tenant_id, served.id)
    vector_index = pool.vector_index(
        (served.id, pointer.version),
        lambda: IndexVersions(context.artifacts, prefix).load(pointer),
    )
    fetch = spec.k * (FILTER_OVER_FETCH if spec.filter else OVER_FETCH)
    search_s = 0.0
    for _round in range(MAX_ROUNDS):
        started = time.perf_counter()
        found = vector_index.search(query, min(fetch, max(1, vector_index.live)))
        search_s += time.perf_counter() - started
        hits = _hits(pool, served.id, found.ids[0], found.scores[0], spec)
        if len(hits) >= spec.k or fetch >= vector_index.live:
            return hits[: spec.k], search_s
        fetch *= 4
    return hits[: spec.k], search_s


def _hits(
    pool: ModelPool, index_id: str, ids: Any, scores: Any, spec: SearchSpec
) -> list[SearchHit]:
    assert pool.context is not None
    wanted = [int(i) for i in ids if i >= 0]
    score_of = {int(i): float(s) for i, s in zip(ids, scores, strict=True) if i >= 0}
    with pool.context.sessions() as session:
        rows = DocumentRepo(session, index_id).hits(wanted)
    by_id = {row.id: row for row in rows}
    hits = []
    for chunk_id in wanted:  # faiss order: best first
        row = by_id.get(chunk_id)
        if row is not None and _matches(row, spec.filter):
            hits.append(_hit(row, score_of[chunk_id]))
    return hits


def _matches(row: Any, wanted: dict[str, Any]) -> bool:
    for key, value in wanted.items():
        if key == "file":
            actual = row.source_name
        elif key == "doc_id":
            actual = row.doc_id
        else:
            actual = row.doc_metadata.get(key)
        if actual != value or type(actual) is not type(value):
            return False
    return True


def _hit(row: Any, score: float) -> SearchHit:
    return SearchHit(
        score=score,
        chunk_id=row.id,
        doc_id=row.doc_id,
        file=row.source_name,
        text=row.text,
        position=row.position,
        start=row.start,
        end=row.end,
        page=row.page,
        heading=row.heading,
        metadata=row.doc_metadata,
    )

"""The index job: documents in, a new index version out.

Steps, each a function below:

1. take the index's writer lease (one writer per index; renewed while the job runs);
2. read the documents (uploaded files' masked documents, or inline text masked at submit)
   and plan the change against SQL: unchanged documents (same id and content hash) are
   skipped, changed ones replace their chunks, deleted ones lose them;
3. chunk the new documents (in the embedding model's tokens);
4. embed the chunks through sub-jobs on the embed queue, split by token budget, tracking
   their progress in SQL (no Celery chords: they hang on Redis, celery#3538);
5. write the next FAISS version beside the serving one, then swap it in with the chunk rows
   in ONE SQL transaction. A crash before that commit leaves the old version serving and
   the job recoverable (its next attempt re-uses the embed sub-jobs that finished).
"""

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from jobs.context import JobsContext
from jobs.documents import PLAIN, Document
from jobs.errors import JobCancelledError, RetryableError, UploadNotFoundError
from jobs.index_specs import (
    DocumentFailure,
    DocumentInput,
    IndexProgress,
    IndexResult,
    IndexSpec,
)
from jobs.indexes import get_index_row, index_prefix
from storage.index_repos import DocumentRepo, IndexRepo, NewChunk, NewDocument
from storage.tables import IndexRow
from workers.backends.index_versions import IndexPointer, IndexVersions
from workers.fanout import EmbedFanOut
from workers.pool import ModelPool
from workers.runners import RunningJob

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITER_LEASE_S = 60.0
FAILPOINT_ENV = "SEEKQ_FAILPOINT"
# HNSW cannot delete: removed vectors stay as tombstones until a rebuild, done on its own
# once they are this share of the live vectors.
REBUILD_TOMBSTONE_SHARE = 0.25


@dataclass
class Plan:
    """What one index job changes."""

    new: list[NewDocument] = field(default_factory=list)  # chunks not yet embedded
    texts: list[list[str]] = field(default_factory=list)  # per new document, its chunk texts
    replaced: list[int] = field(default_factory=list)  # document row ids to drop
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failures: list[DocumentFailure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged + self.deleted + len(self.failures)


def run_index(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    assert isinstance(spec, IndexSpec)
    context = _context(pool)
    index_id = _read_index(context, job.tenant_id, spec.index).id
    with _writer(context, index_id, job):
        # Read again under the writer lease: a writer before us may have swapped in a new
        # version since, and this job must build on that one.
        index = _read_index(context, job.tenant_id, spec.index)
        clock = _Clock(job.job_id)
        plan = clock.step("plan", lambda: _plan(context, pool, index, spec, job))
        if not plan.new and not plan.replaced and spec.action != "rebuild":
            counts = (index.document_count, index.chunk_count)
            return _result(spec, plan, index.version, 0, counts, 0)  # nothing to write
        vectors, embed_jobs = clock.step("embed", lambda: _embed(context, index, plan, job))
        pointer, removed = clock.step(
            "write", lambda: _write_version(context, index, plan, vectors, spec.action)
        )
        _failpoint("index.before_swap")
        counts = clock.step("swap", lambda: _swap(context, index, plan, pointer, job))
        clock.report()
    versions = IndexVersions(context.artifacts, index_prefix(index.tenant_id, index.id))
    versions.prune({pointer.version, index.version})
    return _result(spec, plan, pointer.version, removed, counts, embed_jobs)


def _result(
    spec: IndexSpec,
    plan: Plan,
    version: int,
    removed: int,
    counts: tuple[int, int],
    embed_jobs: int,
) -> IndexResult:
    """The job's result; `counts`: the index's documents and chunks after it."""
    return IndexResult(
        index=spec.index,
        action=spec.action,
        version=version,
        documents_total=plan.total,
        documents_done=plan.total,
        documents_added=plan.added,
        documents_updated=plan.updated,
        documents_unchanged=plan.unchanged,
        documents_deleted=plan.deleted,
        documents_failed=len(plan.failures),
        chunks=sum(len(t) for t in plan.texts),
        chunks_removed=removed,
        index_documents=counts[0],
        index_chunks=counts[1],
        embed_jobs=embed_jobs,
        failures=plan.failures,
    )


class _Clock:
    """Seconds per step of one index job, logged at the end (where does ingest time go)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.steps: dict[str, float] = {}

    def step(self, name: str, run: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return run()
        finally:
            self.steps[name] = time.perf_counter() - started

    def report(self) -> None:
        timings = " ".join(f"{name}_s={s:.2f}" for name, s in self.steps.items())
        log.info("index job steps job_id=%s %s", self.job_id, timings)


def _read_index(context: JobsContext, tenant_id: str, name: str) -> IndexRow:
    with context.sessions() as session:
        index = get_index_row(session, tenant_id, name)
        session.expunge(index)
    return index


def _context(pool: ModelPool) -> JobsContext:
    if pool.context is None:
        raise RuntimeError("index jobs need the worker's jobs context")
    return pool.context


# ---------------------------------------------------------------- the writer lease


@contextmanager
def _writer(context: JobsContext, index_id: str, job: RunningJob) -> Iterator[None]:
    """Hold the index's writer lease while the block runs: wait for it (cancellable),
    renew it from a thread, release it at the end (a crashed holder's lease runs out)."""
    while not _take_writer(context, index_id, job.job_id):
        if job.should_stop():
            raise JobCancelledError("cancelled while waiting for the index's writer")
        time.sleep(0.5)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew_writer, args=(context, index_id, job.job_id, stop), daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        with context.sessions.begin() as session:
            IndexRepo(session).release_writer(index_id, job.job_id)


def _take_writer(context: JobsContext, index_id: str, job_id: str) -> bool:
    now = datetime.now(UTC)
    with context.sessions.begin() as session:
        until = now + timedelta(seconds=WRITER_LEASE_S)
        return IndexRepo(session).take_writer(index_id, job_id, now, until)


def _renew_writer(context: JobsContext, index_id: str, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(WRITER_LEASE_S / 4):
        try:
            if not _take_writer(context, index_id, job_id):
                log.warning("index writer lease lost job_id=%s", job_id)
        except Exception:  # a DB blip: the next round may work; the swap is fenced anyway
            log.exception("index writer renewal failed job_id=%s", job_id)


# ---------------------------------------------------------------- planning


def _plan(
    context: JobsContext, pool: ModelPool, index: IndexRow, spec: IndexSpec, job: RunningJob
) -> Plan:
    plan = Plan()
    if spec.action == "rebuild":
        return plan
    with context.sessions() as session:
        repo = DocumentRepo(session, index.id)
        if spec.action == "delete":
            found = repo.find_many(spec.delete)
            plan.replaced = [d.id for d in found.values()]
            plan.deleted = len(found)
            for doc_id in sorted(set(spec.delete) - set(found)):
                plan.failures.append(_failure(doc_id, "document_not_found", "not in the index"))
            return plan
        documents = _read_documents(context, job.tenant_id, spec.documents, plan)
        stored = repo.find_many([d.doc_id for d, _ in documents])
    chunker = pool.chunker(index.model, index.chunk_tokens, index.chunk_overlap)
    for document, file_id in documents:
        old = stored.get(document.doc_id)
        if old is not None and old.sha256 == document.sha256:
            plan.unchanged += 1
            continue
        chunks = chunker.chunk(document)
        if not chunks:
            plan.failures.append(_failure(document.doc_id, "empty", "no text to index"))
            continue
        if old is not None:
            plan.replaced.append(old.id)
        plan.updated += old is not None
        plan.added += old is None
        plan.new.append(_new_document(document, file_id, chunks))
        plan.texts.append([c.text for c in chunks])
    return plan


def _read_documents(
    context: JobsContext, tenant_id: str, inputs: list[DocumentInput], plan: Plan
) -> list[tuple[Document, str | None]]:
    """The job's documents with their final ids, content hashes and metadata; a file that
    cannot be read, or a repeated id, is a failure of that document only."""
    found: dict[str, tuple[Document, str | None]] = {}
    for item in inputs:
        try:
            documents = _documents_of(context, tenant_id, item)
        except UploadNotFoundError as error:
            plan.failures.append(_failure(item.file_id or "?", "file_not_found", str(error)))
            continue
        for document in documents:
            if document.doc_id in found:
                message = "the same document id appears twice in this job"
                plan.failures.append(_failure(document.doc_id, "duplicate_id", message))
                continue
            found[document.doc_id] = (document, item.file_id)
    return list(found.values())


def _documents_of(context: JobsContext, tenant_id: str, item: DocumentInput) -> list[Document]:
    extra = dict(item.metadata)
    if item.text is not None:
        assert item.id is not None  # the spec requires it
        document = Document(item.id, item.text, item.id, PLAIN, _sha(item.text))
        return [_with(document, item.id, extra)]
    assert item.file_id is not None
    out = []
    for one in context.files.documents(tenant_id, item.file_id):
        doc_id = one.document.doc_id
        if item.id is not None and one.id_suffix is not None:
            doc_id = item.id + one.id_suffix  # else a .jsonl line's own id
        out.append(_with(one.document, doc_id, extra))
    return out


def _with(document: Document, doc_id: str, extra: dict[str, Any]) -> Document:
    """The document under its final id, with the job's metadata over its own, hashed over
    all of it: a change in text or metadata replaces the document."""
    metadata = {**document.metadata, **extra}
    content = json.dumps([document.sha256, metadata], sort_keys=True, ensure_ascii=False)
    return Document(
        doc_id=doc_id,
        text=document.text,
        source_name=document.source_name,
        media_type=document.media_type,
        sha256=_sha(content),
        pages=document.pages,
        headings=document.headings,
        metadata=metadata,
    )


def _new_document(document: Document, file_id: str | None, chunks: list[Any]) -> NewDocument:
    rows = [
        NewChunk(
            id=-1,  # numbered when the vectors are added
            position=c.index,
            text=c.text,
            start=c.start,
            end=c.end,
            page=c.page,
            heading=c.heading[:512] if c.heading else None,
            token_count=c.token_count,
        )
        for c in chunks
    ]
    return NewDocument(
        doc_id=document.doc_id,
        sha256=document.sha256,
        source_name=document.source_name,
        file_id=file_id,
        media_type=document.media_type,
        metadata=dict(document.metadata),
        chunks=rows,
    )


# ---------------------------------------------------------------- embedding


def _embed(
    context: JobsContext, index: IndexRow, plan: Plan, job: RunningJob
) -> tuple["np.ndarray[Any, Any]", int]:
    texts = [t for per_document in plan.texts for t in per_document]
    tokens = [c.token_count for document in plan.new for c in document.chunks]
    owners = [n for n, per_document in enumerate(plan.texts) for _ in per_document]
    fan_out = EmbedFanOut(
        context,
        parent_id=job.job_id,
        tenant_id=job.tenant_id,
        model=index.model,
        normalize=index.metric == "ip",
        batch_tokens=context.settings.index_embed_batch_tokens,
    )
    settled = plan.unchanged + len(plan.failures) + plan.deleted
    progress = _Progress(owners, settled, plan.total)
    vectors = fan_out.run(texts, tokens, job.should_stop, progress.report)
    return vectors, fan_out.job_count


class _Progress:
    """Progress of the embedding, counted incrementally: each report looks only at the
    chunks embedded since the last one (a 50k-chunk ingest reports ~1,500 times)."""

    def __init__(self, owners: list[int], settled: int, total: int) -> None:
        self.owners = np.asarray(owners, dtype=np.int64)  # per chunk, its document's number
        self.left = np.bincount(self.owners) if len(owners) else np.zeros(0, dtype=np.int64)
        self.seen = np.zeros(len(owners), dtype=np.bool_)
        self.settled = settled  # documents that need no embedding
        self.total = total

    def report(self, embedded: "np.ndarray[Any, np.dtype[np.bool_]]") -> dict[str, Any]:
        fresh = np.flatnonzero(embedded & ~self.seen)
        self.seen[fresh] = True
        np.subtract.at(self.left, self.owners[fresh], 1)
        return IndexProgress(
            documents_total=self.total,
            documents_done=self.settled + int((self.left == 0).sum()),
            chunks=len(self.owners),
            chunks_embedded=int(self.seen.sum()),
        ).model_dump()


# ---------------------------------------------------------------- the new version


def _write_version(
    context: JobsContext,
    index: IndexRow,
    plan: Plan,
    vectors: "np.ndarray[Any, Any]",
    action: str,
) -> tuple[IndexPointer, int]:
    """Write the next version's file (not yet serving); returns it and the vectors removed."""
    from workers.backends.vector_index import VectorIndex

    versions = IndexVersions(context.artifacts, index_prefix(index.tenant_id, index.id))
    if index.version and index.version_key:
        current = IndexPointer(
            index.version, index.version_key, index.version_size or 0, index.version_sha256 or ""
        )
        vector_index = versions.load(current)
    else:
        vector_index = VectorIndex.create(
            index.type,  # type: ignore[arg-type]
            index.dimensions,
            index.metric,  # type: ignore[arg-type]
            **index.params,
        )
    with context.sessions() as session:
        removed_ids = DocumentRepo(session, index.id).chunk_ids(plan.replaced)
    removed = vector_index.remove(removed_ids)
    ids = _number_chunks(plan, index.next_chunk_id)
    if len(ids):
        vector_index.add(ids, vectors)
    if action == "rebuild" or _worth_rebuilding(vector_index):
        vector_index.rebuild()
    return versions.write(vector_index, after=index.version), removed


def _number_chunks(plan: Plan, first_id: int) -> "np.ndarray[Any, np.dtype[np.int64]]":
    """Give the new chunks their FAISS ids, in order from the index's next free id."""
    next_id = first_id
    for n, document in enumerate(plan.new):
        numbered = [_renumbered(c, next_id + i) for i, c in enumerate(document.chunks)]
        plan.new[n] = NewDocument(**{**vars(document), "chunks": numbered})
        next_id += len(numbered)
    return np.arange(first_id, next_id, dtype=np.int64)


def _renumbered(chunk: NewChunk, chunk_id: int) -> NewChunk:
    return NewChunk(**{**vars(chunk), "id": chunk_id})


def _worth_rebuilding(vector_index: Any) -> bool:
    live = max(1, vector_index.live)
    return bool(vector_index.tombstones > REBUILD_TOMBSTONE_SHARE * live)


def _swap(
    context: JobsContext, index: IndexRow, plan: Plan, pointer: IndexPointer, job: RunningJob
) -> tuple[int, int]:
    """One transaction: drop replaced documents, add the new ones with their chunks, and
    point the index at the new version (fenced on the writer lease)."""
    now = datetime.now(UTC)
    next_chunk_id = index.next_chunk_id + sum(len(d.chunks) for d in plan.new)
    with context.sessions.begin() as session:
        repo = DocumentRepo(session, index.id)
        repo.remove(plan.replaced)
        for document in plan.new:
            repo.add(document, now)
        documents, chunks = repo.counts()
        values = {
            "version": pointer.version,
            "version_key": pointer.key,
            "version_size": pointer.size,
            "version_sha256": pointer.sha256,
            "next_chunk_id": next_chunk_id,
            "document_count": documents,
            "chunk_count": chunks,
            "updated_at": now,
        }
        if not IndexRepo(session).swap(index.id, job.job_id, index.version, values):
            raise RetryableError("the index writer lease was lost; the new version is dropped")
    return documents, chunks


# ---------------------------------------------------------------- small parts


def _failure(document: str, code: str, message: str) -> DocumentFailure:
    return DocumentFailure(document=document, code=code, message=message)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _failpoint(name: str) -> None:
    """Crash here when SEEKQ_FAILPOINT names this point: fault-injection tests kill the
    worker at an exact step (a real process exit, as a power cut or OOM kill would)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        log.error("failpoint %s: exiting", name)
        os._exit(70)

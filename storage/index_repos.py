"""Repositories of uploaded files, vector indexes, their documents and chunks, and the
sub-jobs an index job fans out. Like `storage.repos`, each takes a Session and never
commits; statuses are plain strings passed in by `jobs`."""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, Table, delete, func, or_, select, update
from sqlalchemy.orm import Session

from storage.repos import insert_row
from storage.tables import ChunkRow, FileRow, IndexDocumentRow, IndexRow, JobRow

CHUNKS: Table = ChunkRow.__table__  # type: ignore[assignment]


class FileRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: FileRow) -> None:
        self.session.add(row)

    def find(self, file_id: str, tenant_id: str) -> FileRow | None:
        query = select(FileRow).where(FileRow.id == file_id, FileRow.tenant_id == tenant_id)
        return self.session.scalar(query)

    def page(self, tenant_id: str, limit: int, before: str | None) -> Sequence[FileRow]:
        query = select(FileRow).where(FileRow.tenant_id == tenant_id)
        if before is not None:
            query = query.where(FileRow.id < before)
        return self.session.scalars(query.order_by(FileRow.id.desc()).limit(limit)).all()

    def remove(self, row: FileRow) -> None:
        self.session.delete(row)


class IndexRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: IndexRow) -> None:
        self.session.add(row)

    def find(self, tenant_id: str, name: str) -> IndexRow | None:
        query = select(IndexRow).where(IndexRow.tenant_id == tenant_id, IndexRow.name == name)
        return self.session.scalar(query)

    def all(self, tenant_id: str) -> Sequence[IndexRow]:
        query = select(IndexRow).where(IndexRow.tenant_id == tenant_id).order_by(IndexRow.name)
        return self.session.scalars(query).all()

    def take_writer(self, index_id: str, job_id: str, now: datetime, until: datetime) -> bool:
        """Make `job_id` the index's one writer until `until`: when nobody holds it, its
        holder's lease ran out, or `job_id` holds it already (a retried attempt)."""
        free = or_(
            IndexRow.writer_job_id.is_(None),
            IndexRow.writer_job_id == job_id,
            IndexRow.writer_until < now,
        )
        query = (
            update(IndexRow)
            .where(IndexRow.id == index_id, free)
            .values(writer_job_id=job_id, writer_until=until)
        )
        return _matched(self.session.execute(query))

    def release_writer(self, index_id: str, job_id: str) -> None:
        query = (
            update(IndexRow)
            .where(IndexRow.id == index_id, IndexRow.writer_job_id == job_id)
            .values(writer_job_id=None, writer_until=None)
        )
        self.session.execute(query)

    def swap(self, index_id: str, job_id: str, from_version: int, values: dict[str, Any]) -> bool:
        """Point the index at a new version (with its counts); fenced on the writer and on
        the version the new one was built from."""
        query = (
            update(IndexRow)
            .where(
                IndexRow.id == index_id,
                IndexRow.writer_job_id == job_id,
                IndexRow.version == from_version,
            )
            .values(**values)
        )
        return _matched(self.session.execute(query))

    def remove(self, row: IndexRow) -> None:
        self.session.execute(delete(ChunkRow).where(ChunkRow.index_id == row.id))
        self.session.execute(delete(IndexDocumentRow).where(IndexDocumentRow.index_id == row.id))
        self.session.delete(row)


@dataclass(frozen=True)
class StoredDocument:
    id: int
    doc_id: str
    sha256: str
    chunk_count: int


@dataclass(frozen=True)
class NewChunk:
    id: int
    position: int
    text: str
    start: int
    end: int
    page: int | None
    heading: str | None
    token_count: int


@dataclass(frozen=True)
class NewDocument:
    doc_id: str
    sha256: str
    source_name: str
    file_id: str | None
    media_type: str
    metadata: dict[str, Any]
    chunks: list[NewChunk]


class DocumentRepo:
    """An index's documents and their chunks."""

    def __init__(self, session: Session, index_id: str) -> None:
        self.session = session
        self.index_id = index_id

    def find_many(self, doc_ids: Collection[str]) -> dict[str, StoredDocument]:
        found: dict[str, StoredDocument] = {}
        ids = list(doc_ids)
        for lo in range(0, len(ids), 500):  # bounded IN lists
            query = select(
                IndexDocumentRow.id,
                IndexDocumentRow.doc_id,
                IndexDocumentRow.sha256,
                IndexDocumentRow.chunk_count,
            ).where(
                IndexDocumentRow.index_id == self.index_id,
                IndexDocumentRow.doc_id.in_(ids[lo : lo + 500]),
            )
            for row in self.session.execute(query):
                found[row.doc_id] = StoredDocument(row.id, row.doc_id, row.sha256, row.chunk_count)
        return found

    def chunk_ids(self, document_ids: Collection[int]) -> list[int]:
        ids = list(document_ids)
        found: list[int] = []
        for lo in range(0, len(ids), 500):
            query = select(ChunkRow.id).where(
                ChunkRow.index_id == self.index_id, ChunkRow.document_id.in_(ids[lo : lo + 500])
            )
            found += self.session.scalars(query).all()
        return found

    def remove(self, document_ids: Collection[int]) -> None:
        ids = list(document_ids)
        for lo in range(0, len(ids), 500):
            part = ids[lo : lo + 500]
            self.session.execute(
                delete(ChunkRow).where(
                    ChunkRow.index_id == self.index_id, ChunkRow.document_id.in_(part)
                )
            )
            self.session.execute(delete(IndexDocumentRow).where(IndexDocumentRow.id.in_(part)))

    def add(self, document: NewDocument, now: datetime) -> None:
        row = IndexDocumentRow(
            index_id=self.index_id,
            doc_id=document.doc_id,
            sha256=document.sha256,
            source_name=document.source_name,
            file_id=document.file_id,
            media_type=document.media_type,
            doc_metadata=document.metadata,
            chunk_count=len(document.chunks),
            updated_at=now,
        )
        self.session.add(row)
        self.session.flush()  # its id, for the chunks
        chunks = [
            {"index_id": self.index_id, "document_id": row.id, **vars(c)} for c in document.chunks
        ]
        if chunks:
            self.session.execute(CHUNKS.insert(), chunks)

    def counts(self) -> tuple[int, int]:
        """(documents, chunks) in the index."""
        documents = self.session.scalar(
            select(func.count()).where(IndexDocumentRow.index_id == self.index_id)
        )
        chunks = self.session.scalar(select(func.count()).where(ChunkRow.index_id == self.index_id))
        return int(documents or 0), int(chunks or 0)

    def hits(self, chunk_ids: Collection[int]) -> list[Any]:
        """Chunks with their documents' id, source name and metadata, in no order."""
        query = (
            select(
                ChunkRow.id,
                ChunkRow.text,
                ChunkRow.position,
                ChunkRow.start,
                ChunkRow.end,
                ChunkRow.page,
                ChunkRow.heading,
                IndexDocumentRow.doc_id,
                IndexDocumentRow.source_name,
                IndexDocumentRow.doc_metadata,
            )
            .join(IndexDocumentRow, IndexDocumentRow.id == ChunkRow.document_id)
            .where(ChunkRow.index_id == self.index_id, ChunkRow.id.in_(list(chunk_ids)))
        )
        return list(self.session.execute(query).all())

    def page(self, limit: int, after: str | None) -> Sequence[IndexDocumentRow]:
        query = select(IndexDocumentRow).where(IndexDocumentRow.index_id == self.index_id)
        if after is not None:
            query = query.where(IndexDocumentRow.doc_id > after)
        return self.session.scalars(query.order_by(IndexDocumentRow.doc_id).limit(limit)).all()


class SubJobRepo:
    """The sub-jobs of a parent job (an index job's embed batches, a batch's lines)."""

    def __init__(self, session: Session, parent_id: str) -> None:
        self.session = session
        self.parent_id = parent_id

    def existing(self) -> dict[str, tuple[str, str]]:
        """idempotency key → (job id, status) of the parent's sub-jobs so far."""
        query = select(JobRow.idempotency_key, JobRow.id, JobRow.status).where(
            JobRow.parent_id == self.parent_id
        )
        return {row.idempotency_key: (row.id, row.status) for row in self.session.execute(query)}

    def insert(self, row: JobRow) -> None:
        insert_row(self.session, row)

    def statuses(self) -> dict[str, str]:
        query = select(JobRow.id, JobRow.status).where(JobRow.parent_id == self.parent_id)
        return {row.id: row.status for row in self.session.execute(query)}

    def status_counts(self) -> dict[str, int]:
        """How many of the parent's sub-jobs are in each status (one GROUP BY)."""
        query = (
            select(JobRow.status, func.count())
            .where(JobRow.parent_id == self.parent_id)
            .group_by(JobRow.status)
        )
        return {status: int(count) for status, count in self.session.execute(query)}

    def tenant_batch_lines(
        self, tenant_id: str, line_statuses: Collection[str], batch_statuses: Collection[str]
    ) -> int:
        """Lines in `line_statuses` of all the tenant's batches in `batch_statuses`."""
        batches = select(JobRow.id).where(
            JobRow.tenant_id == tenant_id,
            JobRow.kind == "batch",
            JobRow.status.in_(list(batch_statuses)),
        )
        query = select(func.count()).where(
            JobRow.tenant_id == tenant_id,
            JobRow.status.in_(list(line_statuses)),
            JobRow.parent_id.in_(batches.scalar_subquery()),
        )
        return int(self.session.scalar(query) or 0)

    def rows(self, job_ids: Sequence[str]) -> Sequence[JobRow]:
        query = select(JobRow).where(
            JobRow.parent_id == self.parent_id, JobRow.id.in_(list(job_ids))
        )
        return self.session.scalars(query).all()

    def results(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        query = select(JobRow.id, JobRow.result).where(JobRow.id.in_(list(job_ids)))
        return {row.id: row.result for row in self.session.execute(query)}

    def error_of(self, job_id: str) -> tuple[str | None, str | None]:
        row = self.session.execute(
            select(JobRow.error_type, JobRow.error_message).where(JobRow.id == job_id)
        ).first()
        return (row.error_type, row.error_message) if row else (None, None)

    def cancel_queued(self, statuses: Collection[str], values: dict[str, Any]) -> int:
        query = (
            update(JobRow)
            .where(JobRow.parent_id == self.parent_id, JobRow.status.in_(list(statuses)))
            .values(**values)
        )
        result = self.session.execute(query)
        assert isinstance(result, CursorResult)
        return result.rowcount

    def set_progress(self, progress: dict[str, Any]) -> None:
        query = update(JobRow).where(JobRow.id == self.parent_id).values(progress=progress)
        self.session.execute(query)


def _matched(result: Any) -> bool:
    assert isinstance(result, CursorResult)
    return result.rowcount == 1

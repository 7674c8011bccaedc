"""Public views of uploaded files, indexes and index documents (what the API and CLI show)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from storage.tables import FileRow, IndexDocumentRow, IndexRow


class FileView(BaseModel):
    """OpenAI's file object, plus how many documents (or, for a fine-tune file, training
    examples) seekq read from the file."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int  # unix seconds, as OpenAI
    filename: str  # PII-masked
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None
    documents: int

    @classmethod
    def from_row(cls, row: FileRow) -> "FileView":
        return cls(
            id=row.id,
            bytes=row.size_bytes,
            created_at=int(row.created_at.timestamp()),
            filename=row.filename,
            purpose=row.purpose,
            status_details=row.status_details,
            documents=row.documents,
        )


class FilePage(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileView]
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class IndexView(BaseModel):
    name: str
    model: str
    type: str
    metric: str
    params: dict[str, Any]
    dimensions: int
    chunk_tokens: int
    chunk_overlap: int
    version: int
    documents: int
    chunks: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: IndexRow) -> "IndexView":
        return cls(
            name=row.name,
            model=row.model,
            type=row.type,
            metric=row.metric,
            params=row.params,
            dimensions=row.dimensions,
            chunk_tokens=row.chunk_tokens,
            chunk_overlap=row.chunk_overlap,
            version=row.version,
            documents=row.document_count,
            chunks=row.chunk_count,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class IndexList(BaseModel):
    data: list[IndexView]


class IndexDeleted(BaseModel):
    name: str
    deleted: bool = True


class IndexDocumentView(BaseModel):
    doc_id: str
    file: str
    file_id: str | None
    chunks: int
    sha256: str
    updated_at: datetime
    metadata: dict[str, Any]

    @classmethod
    def from_row(cls, row: IndexDocumentRow) -> "IndexDocumentView":
        return cls(
            doc_id=row.doc_id,
            file=row.source_name,
            file_id=row.file_id,
            chunks=row.chunk_count,
            sha256=row.sha256,
            updated_at=row.updated_at,
            metadata=row.doc_metadata,
        )


class IndexDocumentPage(BaseModel):
    data: list[IndexDocumentView]
    next_cursor: str | None

"""Spec and result models of `index` and `search` jobs, and of the index resources.

An index is a named, tenant-owned vector index: its embedding model, metric and FAISS
type are fixed when it is created. Its chunks' text and metadata live in SQL; the FAISS
files hold vectors and int64 chunk ids only.
"""

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from jobs.specs import DEFAULT_EMBED_MODEL, ModelName, StrictModel

INDEX_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
FILE_ID_PATTERN = r"^file-[0-9a-f]{32}$"
MAX_DOC_ID_CHARS = 512
MAX_INDEX_DOCUMENTS = 10_000
MAX_INLINE_TEXT_CHARS = 1_000_000
MAX_METADATA_KEYS = 32
MAX_METADATA_VALUE_CHARS = 1024
MAX_QUERY_CHARS = 4096
MAX_K = 100

IndexName = Annotated[str, Field(pattern=INDEX_NAME_PATTERN)]
FileId = Annotated[str, Field(pattern=FILE_ID_PATTERN)]
DocId = Annotated[str, Field(min_length=1, max_length=MAX_DOC_ID_CHARS)]
MetaKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
MetaValue = Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)] | int | float | bool
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=MAX_METADATA_KEYS)]
IndexType = Literal["flat", "hnsw", "ivf"]
IndexMetric = Literal["ip", "l2"]
IndexAction = Literal["upsert", "delete", "rebuild"]


class IndexParams(StrictModel):
    """FAISS parameters; those that do not apply to the index's type are refused."""

    m: int | None = Field(default=None, ge=4, le=128)  # hnsw: neighbours per node
    ef_construction: int | None = Field(default=None, ge=8, le=4096)  # hnsw
    ef_search: int | None = Field(default=None, ge=1, le=32768)  # hnsw
    nlist: int | None = Field(default=None, ge=1, le=65536)  # ivf: clusters
    nprobe: int | None = Field(default=None, ge=1, le=65536)  # ivf: clusters per query


PARAMS_BY_TYPE: dict[str, frozenset[str]] = {
    "flat": frozenset(),
    "hnsw": frozenset({"m", "ef_construction", "ef_search"}),
    "ivf": frozenset({"nlist", "nprobe"}),
}


class IndexCreate(StrictModel):
    """Create an index (synchronous: one SQL row, nothing to compute)."""

    name: IndexName
    model: ModelName = DEFAULT_EMBED_MODEL
    type: IndexType = "hnsw"
    metric: IndexMetric = "ip"
    params: IndexParams = IndexParams()
    chunk_tokens: int = Field(default=256, ge=16, le=512)
    chunk_overlap: int = Field(default=32, ge=0, le=128)

    @model_validator(mode="after")
    def _params_apply(self) -> "IndexCreate":
        given = {k for k, v in self.params.model_dump().items() if v is not None}
        extra = sorted(given - PARAMS_BY_TYPE[self.type])
        if extra:
            raise ValueError(f"params {extra} do not apply to a {self.type} index")
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError("chunk_overlap must be under half of chunk_tokens")
        return self


class DocumentInput(StrictModel):
    """One document to add or replace: an uploaded file, or inline text.

    `id` is the document's identity in the index (upsert key); it defaults to the file's
    name. A .jsonl file holds many documents: each line's own "id", else `<id>#<line>`.
    """

    id: DocId | None = None
    file_id: FileId | None = None
    text: Annotated[str, Field(min_length=1, max_length=MAX_INLINE_TEXT_CHARS)] | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "DocumentInput":
        if (self.file_id is None) == (self.text is None):
            raise ValueError("give exactly one of 'file_id' and 'text'")
        if self.text is not None and self.id is None:
            raise ValueError("an inline 'text' document needs an 'id'")
        return self


class IndexSpec(StrictModel):
    """Change an index: upsert documents, delete documents by id, or rebuild (compact)."""

    index: IndexName
    action: IndexAction = "upsert"
    documents: list[DocumentInput] = Field(default_factory=list, max_length=MAX_INDEX_DOCUMENTS)
    delete: list[DocId] = Field(default_factory=list, max_length=MAX_INDEX_DOCUMENTS)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "IndexSpec":
        documents = [DocumentInput.model_construct(**d) for d in data.get("documents", [])]
        return cls.model_construct(**{**data, "documents": documents})

    @model_validator(mode="after")
    def _matches_action(self) -> "IndexSpec":
        if self.action == "upsert" and (not self.documents or self.delete):
            raise ValueError("upsert takes 'documents' (and no 'delete')")
        if self.action == "delete" and (not self.delete or self.documents):
            raise ValueError("delete takes 'delete' ids (and no 'documents')")
        if self.action == "rebuild" and (self.documents or self.delete):
            raise ValueError("rebuild takes neither 'documents' nor 'delete'")
        return self


class DocumentFailure(StrictModel):
    document: str  # the document id, or the file id when the file could not be read
    code: str
    message: str


class IndexProgress(StrictModel):
    documents_total: int
    documents_done: int
    chunks: int  # chunks to embed in this job
    chunks_embedded: int


class IndexResult(StrictModel):
    index: str
    action: IndexAction
    version: int  # the index version this job swapped in
    documents_total: int
    documents_done: int
    documents_added: int
    documents_updated: int
    documents_unchanged: int
    documents_deleted: int
    documents_failed: int
    chunks: int  # chunks embedded by this job
    chunks_removed: int
    index_documents: int  # documents in the index after this job
    index_chunks: int  # live chunks in the index after this job
    embed_jobs: int
    failures: list[DocumentFailure]


SearchFilter = Annotated[dict[MetaKey, MetaValue], Field(max_length=16)]


class SearchSpec(StrictModel):
    """Top-k chunks of an index for a query. `filter` keys: `file` (the source file name),
    `doc_id`, or any metadata key; values must match exactly."""

    index: IndexName
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    k: int = Field(default=5, ge=1, le=MAX_K)
    filter: SearchFilter = Field(default_factory=dict)


class SearchHit(StrictModel):
    score: float  # ip: cosine for normalised vectors (higher is closer); l2: squared distance
    chunk_id: int
    doc_id: str
    file: str
    text: str
    position: int
    start: int
    end: int
    page: int | None
    heading: str | None
    metadata: dict[str, Any]


class SearchTiming(StrictModel):
    embed_ms: float
    search_ms: float
    fetch_ms: float


class SearchResult(StrictModel):
    index: str
    version: int
    model: str
    metric: IndexMetric
    hits: list[SearchHit]
    timing: SearchTiming

"""SQLAlchemy 2.0 typed tables: tenants, API keys, jobs, audit events, uploaded files,
vector indexes with their documents and chunks, LoRA adapters and fine-tune events,
webhook endpoints and their deliveries."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JsonType, datetime: UTCDateTime}


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    # The public half of the key: looked up directly, the secret half is only stored hashed.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        # A tenant's live jobs, counted at every submit (the jobs-in-flight quota).
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
        # The outbox sweep's work list: queued jobs whose message is not known to be in
        # Redis. Partial, so it holds only those few rows, never the whole backlog.
        Index(
            "ix_jobs_undispatched",
            "created_at",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
            sqlite_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=5)
    actor: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]  # PII-masked
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error_type: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # A sub-job (an index job's embed batches) names its parent; None for top-level jobs.
    parent_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    # Live progress of a long job (index jobs: documents_total, documents_done, chunks).
    progress: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Tokens the job puts in the queue (estimated at submit: input + most output), counted
    # against the tenant's enqueued-tokens quota while it is queued or running. Sub-jobs
    # are inserted with Core (storage.repos.insert_row) and take the server default.
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # When the job's id was last put on its queue (the outbox marker): NULL while a queued
    # job has no message known to be in Redis; the reconciler's sweep publishes those.
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEventRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_tenant_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    masked_input: Mapped[dict[str, Any]]
    entity_counts: Mapped[dict[str, Any]]
    policy_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FileRow(Base):
    """An uploaded file. Only its masked documents are stored (an artifact): never the
    uploaded bytes, which may hold personal data."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-<32 hex>
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    filename: Mapped[str] = mapped_column(String(255))  # the safe name, PII-masked
    purpose: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # of the upload
    media_type: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))  # of the stored (masked) documents
    artifact_key: Mapped[str] = mapped_column(String(512))
    documents: Mapped[int] = mapped_column(Integer)
    # A batch input file's requests' input tokens (estimated): what its batch enqueues.
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    status_details: Mapped[str | None] = mapped_column(Text, default=None)
    entity_counts: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexRow(Base):
    """A named vector index. `version` names the FAISS file that serves searches: the
    index job writes the next version's file first, then swaps this row (with the chunk
    rows) in one transaction, so SQL and the served vectors always agree."""

    __tablename__ = "indexes"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_indexes_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(257))
    type: Mapped[str] = mapped_column(String(8))
    metric: Mapped[str] = mapped_column(String(4))
    params: Mapped[dict[str, Any]]
    dimensions: Mapped[int] = mapped_column(Integer)
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=0)  # 0: nothing indexed yet
    version_key: Mapped[str | None] = mapped_column(String(512), default=None)
    version_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    version_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    next_chunk_id: Mapped[int] = mapped_column(BigInteger, default=0)
    document_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    # One writer per index: the index job holding it, until when (renewed while it runs).
    writer_job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    writer_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexDocumentRow(Base):
    __tablename__ = "index_documents"
    __table_args__ = (UniqueConstraint("index_id", "doc_id", name="uq_index_documents_doc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    index_id: Mapped[str] = mapped_column(ForeignKey("indexes.id", ondelete="CASCADE"))
    doc_id: Mapped[str] = mapped_column(String(512))  # PII-masked
    sha256: Mapped[str] = mapped_column(String(64))  # of the masked content: the upsert key
    source_name: Mapped[str] = mapped_column(String(255))  # PII-masked
    file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    media_type: Mapped[str] = mapped_column(String(128))
    doc_metadata: Mapped[dict[str, Any]]  # PII-masked
    chunk_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChunkRow(Base):
    """A chunk's masked text and where it came from; `id` is its FAISS id in the index."""

    __tablename__ = "index_chunks"
    __table_args__ = (Index("ix_index_chunks_document", "document_id"),)

    index_id: Mapped[str] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    document_id: Mapped[int] = mapped_column(ForeignKey("index_documents.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)  # PII-masked
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer, default=None)
    heading: Mapped[str | None] = mapped_column(String(512), default=None)
    token_count: Mapped[int] = mapped_column(Integer)


class AdapterRow(Base):
    """A LoRA adapter made by a fine-tune job: a PEFT directory in the artifact store
    (`artifact_prefix`/adapter_config.json and adapter_model.safetensors), served as the
    model `<base_model>:<name>` to its tenant only. The row is written when the job is
    submitted (`status` "training": the name is reserved) and filled in when it succeeds
    ("ready"); only ready adapters are listed and served."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("tenant_id", "base_model", "name", name="uq_adapters_tenant_name"),
    )

    id: Mapped[str] = mapped_column(String(34), primary_key=True)  # a_<32 hex>: the PEFT name
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    base_model: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str] = mapped_column(String(36), unique=True)
    status: Mapped[str] = mapped_column(String(8), default="ready")  # training | ready
    training_file: Mapped[str] = mapped_column(String(40))
    dataset_sha256: Mapped[str] = mapped_column(String(64), default="")  # masked training set
    hyperparameters: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    artifact_prefix: Mapped[str] = mapped_column(String(512))
    files: Mapped[dict[str, Any]]  # file name -> {"size": bytes, "sha256": hex}
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTuneEventRow(Base):
    """What a fine-tune job reported: messages and per-step metrics (step, loss, lr,
    eval_loss), served as OpenAI fine-tuning job events."""

    __tablename__ = "fine_tune_events"
    __table_args__ = (Index("ix_fine_tune_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(36))
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(8))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpointRow(Base):
    """A tenant's webhook URL and the event types it receives. Its signing secret is never
    stored: it is derived from the server secret, the endpoint id and `secret_version`
    (a rotation bumps the version; the previous one may stay valid until
    `previous_secret_until`). A deleted endpoint keeps its row (`deleted_at`), so events
    already recorded for it never point at nothing."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # we_<32 hex>
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JsonType)
    secret_version: Mapped[int] = mapped_column(Integer, default=1)
    previous_secret_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDeliveryRow(Base):
    """One event for one endpoint: written in the same transaction as the job's terminal
    status (an outbox), then POSTed until the endpoint answers 2xx or the retries run
    out. The payload holds ids only, never job input or output."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # evt_<32 hex>
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    tenant_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # While a sender holds it ("sending"): until when. Past it, the sweep takes it back.
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    # When its id was last put on the queue (None: due to be published by the sweep).
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

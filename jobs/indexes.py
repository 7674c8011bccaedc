"""Vector indexes as tenant-owned resources: create, read, list, delete, list documents,
and the jobs that change or search them (submitted through `JobService`).

Creating an index is synchronous: one SQL row, nothing to compute. Changing it (upsert,
delete, rebuild) is an `index` job on `cpu.index`; searching it is a `search` job on
`cpu.search`, which the gateway waits for.
"""

import functools
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import ConfigError, IndexBusyError, IndexExistsError, IndexNotFoundError
from jobs.index_records import IndexDocumentPage, IndexDocumentView, IndexView
from jobs.index_specs import INDEX_NAME_PATTERN, IndexCreate
from jobs.keys import Principal
from jobs.registry import ModelKind, ModelRegistry, resolve_source
from jobs.service import JobService, Submitted, audit_event
from storage.artifacts import ArtifactStore
from storage.index_repos import DocumentRepo, IndexRepo
from storage.repos import AuditRepo
from storage.tables import IndexRow

SEARCH_PRIORITY = 9
MAX_DOCUMENT_PAGE = 1000


def index_prefix(tenant_id: str, index_id: str) -> str:
    """Where an index's version files live in the artifact store."""
    return f"indexes/{tenant_id}/{index_id}"


class IndexService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        models: ModelRegistry,
        jobs: JobService,
        artifacts: ArtifactStore,
    ) -> None:
        self.sessions = sessions
        self.models = models
        self.jobs = jobs
        self.artifacts = artifacts

    def create(self, who: Principal, body: IndexCreate) -> IndexView:
        entry = self.models.get(body.model, ModelKind.EMBEDDING)
        now = datetime.now(UTC)
        row = IndexRow(
            id=str(uuid.uuid4()),
            tenant_id=who.tenant_id,
            name=body.name,
            model=body.model,
            type=body.type,
            metric=body.metric,
            params=body.params.model_dump(exclude_none=True),
            dimensions=embedding_dimensions(resolve_source(entry.source)),
            chunk_tokens=body.chunk_tokens,
            chunk_overlap=body.chunk_overlap,
            version=0,
            next_chunk_id=0,
            document_count=0,
            chunk_count=0,
            created_at=now,
            updated_at=now,
        )
        try:
            with self.sessions.begin() as session:
                IndexRepo(session).add(row)
                session.flush()
                AuditRepo(session).add(audit_event(who, "index.created", body.model_dump()))
        except IntegrityError:
            raise IndexExistsError(f"an index named '{body.name}' exists already") from None
        return IndexView.from_row(row)

    def get(self, who: Principal, name: str) -> IndexView:
        with self.sessions() as session:
            return IndexView.from_row(get_index_row(session, who.tenant_id, name))

    def all(self, who: Principal) -> list[IndexView]:
        with self.sessions() as session:
            return [IndexView.from_row(r) for r in IndexRepo(session).all(who.tenant_id)]

    def delete(self, who: Principal, name: str) -> None:
        """Drop the index, its documents, chunks and version files. Refused while an index
        job writes it (cancel the job first)."""
        with self.sessions.begin() as session:
            row = get_index_row(session, who.tenant_id, name)
            until = row.writer_until
            if row.writer_job_id is not None and until is not None and until > datetime.now(UTC):
                raise IndexBusyError(f"index '{name}' is being written by job {row.writer_job_id}")
            prefix = index_prefix(row.tenant_id, row.id)
            IndexRepo(session).remove(row)
            AuditRepo(session).add(audit_event(who, "index.deleted", {"name": name}))
        for key in self.artifacts.list(f"{prefix}/"):
            self.artifacts.delete(key)

    def documents(
        self, who: Principal, name: str, limit: int = 100, cursor: str | None = None
    ) -> IndexDocumentPage:
        limit = max(1, min(limit, MAX_DOCUMENT_PAGE))
        with self.sessions() as session:
            row = get_index_row(session, who.tenant_id, name)
            rows = DocumentRepo(session, row.id).page(limit, cursor)
        views = [IndexDocumentView.from_row(r) for r in rows]
        next_cursor = views[-1].doc_id if len(views) == limit else None
        return IndexDocumentPage(data=views, next_cursor=next_cursor)

    def change(
        self, who: Principal, name: str, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> Submitted:
        """Queue an index job (upsert, delete or rebuild) for the named index."""
        return self.jobs.submit(
            who, "index", {**spec, "index": name}, idempotency_key=idempotency_key
        )

    def search(self, who: Principal, name: str, spec: dict[str, Any]) -> Submitted:
        """Queue a search job on the fast path (its own queue and worker, top priority);
        its caller waits for it, so a broker outage is an error now, not a job for later."""
        spec = {**spec, "index": name}
        return self.jobs.submit(
            who, "search", spec, priority=SEARCH_PRIORITY, require_dispatch=True
        )


def get_index_row(session: Session, tenant_id: str, name: str) -> IndexRow:
    """The tenant's index; IndexNotFoundError (naming it only if it is a valid name)."""
    valid = re.fullmatch(INDEX_NAME_PATTERN, name) is not None
    row = IndexRepo(session).find(tenant_id, name) if valid else None
    if row is None:
        raise IndexNotFoundError(f"no index named '{name}'" if valid else "no such index")
    return row


@functools.cache  # a few small files, read once per model directory and process
def embedding_dimensions(model_dir: Path) -> int:
    """The vector size of a sentence-embedding model, read from its files (no torch)."""
    for relative, key in (
        ("1_Pooling/config.json", "word_embedding_dimension"),
        ("config.json", "hidden_size"),
    ):
        path = model_dir / relative
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and value > 0:
                return value
    raise ConfigError(f"cannot tell the embedding size of the model in {model_dir}")

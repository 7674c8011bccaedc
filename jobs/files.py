"""Uploaded files: read, masked and stored as documents; never kept as uploaded.

An upload is read at once (`jobs.documents.extract`: size limit, content sniffing, per-format
errors), every document is PII-masked (`mask_document`), and only the masked documents are
stored, as JSON lines in the artifact store under `files/<tenant>/<file id>.jsonl`. The
uploaded bytes may hold personal data and are not kept anywhere. File names are masked too,
in the row and in every error message.
"""

import json
import re
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from jobs.batch_input import decode_batch_lines, encode_batch_lines, parse_batch_file
from jobs.datasets import decode_examples, encode_examples, parse_dataset
from jobs.documents import BadLineError, Document, DocumentError, extract, mask_document, safe_name
from jobs.errors import ArtifactCorruptError, DatasetError, SpecError, UploadNotFoundError
from jobs.index_records import FilePage, FileView
from jobs.index_specs import FILE_ID_PATTERN
from jobs.keys import Principal
from jobs.pii import PiiMasker
from jobs.quota import request_tokens
from jobs.service import audit_event
from storage.artifacts import (
    ArtifactDigestError,
    ArtifactNotFoundError,
    ArtifactStore,
    get_verified,
)
from storage.index_repos import FileRepo
from storage.repos import AuditRepo
from storage.tables import FileRow

# OpenAI's purposes that mean "documents to search"; "fine-tune" files are training
# datasets (jobs.datasets); batch files are other issues' work and are refused until then.
DOCUMENT_PURPOSES = frozenset({"assistants", "user_data", "index"})
FINE_TUNE = "fine-tune"
BATCH = "batch"
BATCH_OUTPUT = "batch_output"  # made by seekq (a batch's output and error files)
PURPOSES = DOCUMENT_PURPOSES | {FINE_TUNE, BATCH}
MAX_DETAIL_ERRORS = 5


@dataclass(frozen=True)
class StoredDocument:
    """One masked document of a file. `id_suffix` is set when its id was made from the
    file name: "" for the one document of a file, `#<line>` for a .jsonl line without an
    "id"; an index job puts the document id it was given in front of it. None: a .jsonl
    line's own "id", kept as it is."""

    document: Document
    id_suffix: str | None


@dataclass(frozen=True)
class FineTuneFile:
    file_id: str
    examples: list[dict[str, Any]]  # masked, each with its "line"
    sha256: str  # of the stored (masked) examples


class FileService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        artifacts: ArtifactStore,
        masker: PiiMasker,
        max_file_bytes: int,
        dataset_limits: tuple[int, int] = (10, 50_000),
        batch_max_lines: int = 50_000,
    ) -> None:
        self.sessions = sessions
        self.artifacts = artifacts
        self.masker = masker
        self.max_file_bytes = max_file_bytes
        self.dataset_limits = dataset_limits  # (min, max) examples of a fine-tune file
        self.batch_max_lines = batch_max_lines

    def upload(self, who: Principal, filename: str, data: bytes, purpose: str) -> FileView:
        if purpose not in PURPOSES:
            known = ", ".join(sorted(PURPOSES))
            raise SpecError(f"purpose: expected one of {known}")
        name = safe_name(filename)
        masked = self.masker.mask(name)
        masked_name = masked.text
        if purpose == FINE_TUNE:
            return self._upload_dataset(who, masked_name, masked.counts, data)
        if purpose == BATCH:
            return self._upload_batch(who, masked_name, masked.counts, data)
        try:
            extraction = extract(name, data, max_bytes=self.max_file_bytes)
        except DocumentError as error:
            raise _renamed(error, masked_name) from None
        counts: Counter[str] = Counter(masked.counts)
        stored = [self._masked(d, name, masked_name, counts) for d in extraction.documents]
        row = FileRow(
            filename=masked_name,
            purpose=purpose,
            size_bytes=len(data),
            media_type=stored[0].document.media_type if stored else "application/jsonl",
            documents=len(stored),
            status_details=_details(extraction.errors, masked_name),
            entity_counts=dict(counts),
        )
        return self._save(who, row, _encode(stored))

    def _upload_dataset(
        self, who: Principal, masked_name: str, name_counts: dict[str, int], data: bytes
    ) -> FileView:
        """A training file: every line checked (400 naming each bad line), then masked."""
        if len(data) > self.max_file_bytes:
            raise DatasetError(f"training file is larger than {self.max_file_bytes} bytes")
        low, high = self.dataset_limits
        dataset = parse_dataset(data, self.masker, min_examples=low, max_examples=high)
        row = FileRow(
            filename=masked_name,
            purpose=FINE_TUNE,
            size_bytes=len(data),
            media_type="application/jsonl",
            documents=len(dataset.examples),
            status_details=None,
            entity_counts=dict(Counter(name_counts) + Counter(dataset.entity_counts)),
        )
        return self._save(who, row, encode_examples(dataset.examples))

    def _upload_batch(
        self, who: Principal, masked_name: str, name_counts: dict[str, int], data: bytes
    ) -> FileView:
        """A batch input file: every line checked (400 naming each bad line), its request
        texts masked; the endpoint is kept as the file's media type."""
        if len(data) > self.max_file_bytes:
            raise DatasetError(f"batch input file is larger than {self.max_file_bytes} bytes")
        batch = parse_batch_file(data, self.masker, max_lines=self.batch_max_lines)
        row = FileRow(
            filename=masked_name,
            purpose=BATCH,
            size_bytes=len(data),
            media_type=f"application/jsonl; endpoint={batch.url}",
            documents=len(batch.lines),
            tokens=sum(request_tokens(line["body"]) for line in batch.lines),
            status_details=None,
            entity_counts=dict(Counter(name_counts) + Counter(batch.entity_counts)),
        )
        return self._save(who, row, encode_batch_lines(batch.lines))

    def store_output(self, who: Principal, filename: str, content: bytes, records: int) -> FileView:
        """A file seekq made for the caller (a batch's output or error file): stored as is,
        it holds results, not the caller's input."""
        row = FileRow(
            filename=filename,
            purpose=BATCH_OUTPUT,
            size_bytes=len(content),
            media_type="application/jsonl",
            documents=records,
            status_details=None,
            entity_counts={},
        )
        return self._save(who, row, content)

    def batch_input(self, tenant_id: str, file_id: str) -> tuple[str, int]:
        """The endpoint a batch input file's requests call and their input tokens (its
        row only)."""
        with self.sessions() as session:
            row = self._row(session, tenant_id, file_id)
            purpose, media_type, tokens = row.purpose, row.media_type, row.tokens
        if purpose != BATCH:
            raise SpecError(f"{file_id} is a '{purpose}' file, not a batch input file")
        return media_type.partition("endpoint=")[2], tokens

    def batch_lines(self, tenant_id: str, file_id: str) -> list[dict[str, Any]]:
        """The masked request lines of a batch input file."""
        return decode_batch_lines(self._content(tenant_id, file_id, {BATCH}))

    def content(self, who: Principal, file_id: str) -> tuple[bytes, str]:
        """A file's stored content and name: what seekq keeps (masked documents or
        examples, masked batch requests, batch outputs), never the upload as sent."""
        with self.sessions() as session:
            row = self._row(session, who.tenant_id, file_id)
            purpose, name = row.purpose, row.filename
        return self._content(who.tenant_id, file_id, {purpose}), name

    def _save(self, who: Principal, row: FileRow, content: bytes) -> FileView:
        """Store the masked content, then its row and audit event (one transaction)."""
        row.id = f"file-{uuid.uuid4().hex}"
        row.tenant_id = who.tenant_id
        info = self.artifacts.put(_key(who.tenant_id, row.id), content)
        row.sha256, row.artifact_key = info.sha256, info.key
        row.created_at = datetime.now(UTC)
        self._commit(who, row)
        return FileView.from_row(row)

    def _masked(
        self, document: Document, name: str, masked_name: str, counts: Counter[str]
    ) -> StoredDocument:
        masked, found = mask_document(document, self.masker)
        counts.update(found)
        suffix = _id_suffix(document.doc_id, name)
        doc_id = self.masker.mask(document.doc_id).text if suffix is None else masked_name + suffix
        return StoredDocument(replace(masked, doc_id=doc_id, source_name=masked_name), suffix)

    def _commit(self, who: Principal, row: FileRow) -> None:
        masked = {
            "file_id": row.id,
            "filename": row.filename,
            "purpose": row.purpose,
            "bytes": row.size_bytes,
            "sha256": row.sha256,  # of the masked content
            "records": row.documents,
        }
        event = audit_event(who, "file.uploaded", masked, row.entity_counts)
        with self.sessions.begin() as session:
            FileRepo(session).add(row)
            AuditRepo(session).add(event)

    def get(self, who: Principal, file_id: str) -> FileView:
        with self.sessions() as session:
            return FileView.from_row(self._row(session, who.tenant_id, file_id))

    def page(self, who: Principal, limit: int = 100, after: str | None = None) -> FilePage:
        with self.sessions() as session:
            rows = FileRepo(session).page(who.tenant_id, limit + 1, after)
        views = [FileView.from_row(r) for r in rows[:limit]]
        return FilePage(data=views, has_more=len(rows) > limit)

    def delete(self, who: Principal, file_id: str) -> None:
        """Forget the file. Indexes keep the documents they were built from."""
        with self.sessions.begin() as session:
            row = self._row(session, who.tenant_id, file_id)
            key = row.artifact_key
            FileRepo(session).remove(row)
        self.artifacts.delete(key)

    def documents(self, tenant_id: str, file_id: str) -> list[StoredDocument]:
        """The masked documents of a tenant's file (for index jobs)."""
        return _decode(self._content(tenant_id, file_id, DOCUMENT_PURPOSES))

    def examples(self, tenant_id: str, file_id: str) -> "FineTuneFile":
        """The masked examples of a tenant's fine-tune file, with its content hash."""
        with self.sessions() as session:
            sha256 = self._row(session, tenant_id, file_id).sha256
        examples = decode_examples(self._content(tenant_id, file_id, {FINE_TUNE}))
        return FineTuneFile(file_id, examples, sha256)

    def _content(self, tenant_id: str, file_id: str, purposes: Collection[str]) -> bytes:
        with self.sessions() as session:
            row = self._row(session, tenant_id, file_id)
            key, purpose, sha256 = row.artifact_key, row.purpose, row.sha256
        if purpose not in purposes:
            raise SpecError(f"{file_id} is a '{purpose}' file, not {_wanted(purposes)}")
        try:
            return get_verified(self.artifacts, key, sha256)
        except ArtifactNotFoundError:
            raise UploadNotFoundError(f"{file_id}: the file's stored content is gone") from None
        except ArtifactDigestError:
            raise ArtifactCorruptError(key, "stored file") from None

    @staticmethod
    def _row(session: Session, tenant_id: str, file_id: str) -> FileRow:
        row = FileRepo(session).find(file_id, tenant_id) if _valid_id(file_id) else None
        if row is None:
            raise UploadNotFoundError(f"no such file: {file_id if _valid_id(file_id) else '?'}")
        return row


def _wanted(purposes: Collection[str]) -> str:
    if FINE_TUNE in purposes:
        return "a fine-tune dataset"
    if BATCH in purposes:
        return "a batch input file"
    return "a document file"


def _valid_id(file_id: str) -> bool:
    return re.fullmatch(FILE_ID_PATTERN, file_id) is not None


def _id_suffix(doc_id: str, name: str) -> str | None:
    if doc_id == name:
        return ""
    if doc_id.startswith(f"{name}#") and doc_id[len(name) + 1 :].isdigit():
        return doc_id[len(name) :]
    return None


def _key(tenant_id: str, file_id: str) -> str:
    return f"files/{tenant_id}/{file_id}.jsonl"


def _renamed(error: DocumentError, masked_name: str) -> DocumentError:
    """The same error, naming the file by its masked name."""
    return type(error)(masked_name, error.reason, line=error.line)


def _details(errors: list[BadLineError], masked_name: str) -> str | None:
    if not errors:
        return None
    shown = "; ".join(str(_renamed(e, masked_name)) for e in errors[:MAX_DETAIL_ERRORS])
    more = (
        f" (and {len(errors) - MAX_DETAIL_ERRORS} more)" if len(errors) > MAX_DETAIL_ERRORS else ""
    )
    return f"{len(errors)} line(s) skipped: {shown}{more}"


def _encode(stored: list[StoredDocument]) -> bytes:
    lines = [
        json.dumps({"document": asdict(s.document), "id_suffix": s.id_suffix}, ensure_ascii=False)
        for s in stored
    ]
    return "\n".join(lines).encode()


def _decode(data: bytes) -> list[StoredDocument]:
    found = []
    # "\n" only: splitlines() would also cut at U+2028, which is raw inside a record.
    for line in filter(None, data.decode().split("\n")):
        record: dict[str, Any] = json.loads(line)
        fields = record["document"]
        document = Document(
            **{
                **fields,
                "pages": tuple(tuple(p) for p in fields["pages"]),
                "headings": tuple(tuple(h) for h in fields["headings"]),
            }
        )
        found.append(StoredDocument(document, record["id_suffix"]))
    return found

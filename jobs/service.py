"""Submit, read, list and cancel jobs: the producer side of the job lifecycle.

Submit masks PII first, writes the job row and its audit event in ONE transaction,
commits, and only then publishes the job id.
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs.catalog import JobKind, KindEntry, get_entry, parse_spec
from jobs.dispatch import Dispatcher
from jobs.errors import (
    BrokerUnavailableError,
    IndexNotFoundError,
    JobNotFoundError,
    ModelNotFoundError,
    SpecError,
)
from jobs.index_specs import IndexSpec, SearchSpec
from jobs.keys import Principal
from jobs.notify import JobEvents
from jobs.pii import POLICY_VERSION, PiiMasker
from jobs.prompts import PromptFormats
from jobs.queue import Publisher
from jobs.quota import TenantQuota, estimate_tokens
from jobs.records import AuditPage, AuditView, JobPage, JobView
from jobs.registry import ModelRegistry, split_model
from jobs.specs import MAX_NEW_TOKENS, GenerateSpec
from jobs.status import JobStatus, check_transition, is_terminal
from jobs.webhooks import Ended, WebhookOutbox
from storage.finetune_repos import AdapterRepo
from storage.index_repos import IndexRepo
from storage.repos import AuditRepo, JobPageQuery, JobRepo
from storage.tables import AuditEventRow, JobRow

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_PAGE = 200


class IdempotencyConflictError(SpecError):
    """The idempotency key was used before for a different request."""


@dataclass(frozen=True)
class Submitted:
    job: JobView
    created: bool  # False: an idempotent replay returned the original job


class JobService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        masker: PiiMasker,
        events: JobEvents,
        request_key: bytes,
        models: ModelRegistry,
        max_new_tokens: int = MAX_NEW_TOKENS,
        quota: TenantQuota | None = None,
        outbox: WebhookOutbox | None = None,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        # Publish, then mark (the outbox); the models choose the queue of embed/generate jobs.
        self.dispatcher = Dispatcher(sessions, publisher, models)
        self.masker = masker
        self.events = events
        self.request_key = request_key
        self.models = models
        self.max_new_tokens = max_new_tokens
        self.quota = quota or TenantQuota(sessions, 0, 0)  # jobs in flight, enqueued tokens
        self.outbox = outbox  # a job cancelled while queued records its webhook events
        self.prompts = PromptFormats()
        # Kind-specific checks before a job is queued (a fine-tune's dataset), added by
        # the services that own them: (who, parsed spec) -> None, raising to refuse.
        self.checks: dict[JobKind, Callable[[Principal, BaseModel], None]] = {}

    def submit(
        self,
        who: Principal,
        kind: str,
        spec: Mapping[str, Any],
        *,
        priority: int = 5,
        idempotency_key: str | None = None,
        tokens: int | None = None,
        require_dispatch: bool = False,
    ) -> Submitted:
        """Queue a job. `tokens`: its enqueued input tokens when the caller knows better
        than the spec's text (a batch: its input file's estimate).

        A job the broker cannot take (Redis down) stays queued and the outbox sweep
        publishes it later; a caller that waits for the result now passes
        `require_dispatch`, and the job then ends failed (`broker_unavailable`) and
        BrokerUnavailableError is raised instead."""
        entry = get_entry(kind)
        parsed = parse_spec(entry, spec)
        if entry.model_kind is not None:
            self._check_model(who, entry, str(getattr(parsed, "model", "")))
        _check_priority(priority)
        request_hash = self._request_hash(entry, parsed, priority)
        if idempotency_key is not None:
            _check_idempotency_key(idempotency_key)
            replay = self._replay(who, idempotency_key, request_hash)
            if replay is not None:
                return replay
        row, counts = self._new_row(who, entry, parsed, priority, idempotency_key, request_hash)
        if isinstance(parsed, GenerateSpec):
            self._check_generate(GenerateSpec.from_stored(row.spec))
        elif isinstance(parsed, IndexSpec | SearchSpec):
            self._check_index(who, parsed.index)
        if entry.kind in self.checks:
            self.checks[entry.kind](who, parsed)
        row.tokens = estimate_tokens(entry.kind.value, row.spec) if tokens is None else tokens
        self.quota.check(who.tenant_id, row.tokens)
        try:
            self._commit_new(who, entry, row, counts)
        except IntegrityError:
            # A concurrent submit with the same idempotency key won the race.
            replay = self._replay(who, idempotency_key, request_hash) if idempotency_key else None
            if replay is None:
                raise
            return replay
        if not self._dispatch(entry, row) and require_dispatch:
            self._abandon(row)
            raise BrokerUnavailableError("the broker (Redis) is unavailable; retry shortly")
        return Submitted(job=JobView.from_row(row), created=True)

    def prepare(
        self, who: Principal, kind: str, spec: Mapping[str, Any]
    ) -> tuple[KindEntry, dict[str, Any], dict[str, int]]:
        """What `submit` checks and masks, without writing anything: the entry, the masked
        spec and its entity counts (a batch's lines become sub-jobs this way)."""
        entry = get_entry(kind)
        parsed = parse_spec(entry, spec)
        if entry.model_kind is not None:
            self._check_model(who, entry, str(getattr(parsed, "model", "")))
        masked, counts = mask_spec(entry, parsed, self.masker)
        if isinstance(parsed, GenerateSpec):
            self._check_generate(GenerateSpec.from_stored(masked))
        return entry, masked, counts

    def _check_generate(self, masked: GenerateSpec) -> None:
        """The operator's max_new_tokens cap, no personal data in the word lists (they are
        stored and queued as given: masking them would break them), and the masked prompt
        fits the model's context."""
        if masked.max_new_tokens > self.max_new_tokens:
            raise SpecError(f"max_new_tokens: at most {self.max_new_tokens} on this server")
        for field in ("stop", "banned_words"):
            _, found = self.masker.mask_many(getattr(masked, field))
            if found:
                kinds = ", ".join(sorted(found))
                raise SpecError(f"{field}: must not hold personal data (found {kinds})")
        base, _ = split_model(masked.model)
        self.prompts.get(self.models.get(base)).check_fits(masked)

    def _check_model(self, who: Principal, entry: KindEntry, name: str) -> None:
        """The base model exists and is of the kind's model kind; `base:adapter` names a
        fine-tuned adapter of this tenant (generate jobs only)."""
        base, adapter = split_model(name)
        assert entry.model_kind is not None
        self.models.get(base, entry.model_kind)
        if adapter is None:
            return
        if entry.kind is not JobKind.GENERATE:
            raise SpecError(f"model: {entry.kind.value} jobs take a base model, not an adapter")
        with self.sessions() as session:
            if AdapterRepo(session).find(who.tenant_id, base, adapter) is None:
                raise ModelNotFoundError(f"no fine-tuned model named '{name}'")

    def _check_index(self, who: Principal, name: str) -> None:
        with self.sessions() as session:
            if IndexRepo(session).find(who.tenant_id, name) is None:
                raise IndexNotFoundError(f"no index named '{name}'")

    def get(self, who: Principal, job_id: str) -> JobView:
        with self.sessions() as session:
            return JobView.from_row(self._row(session, who, job_id))

    def wait(self, who: Principal, job_id: str, timeout_s: float) -> JobView:
        """The job once terminal, or as it stands when `timeout_s` passes (404 at once for
        an unknown job: the first check raises)."""

        def done() -> bool:
            return is_terminal(self._status(who, job_id))

        self.events.wait(job_id, done, timeout_s)
        return self.get(who, job_id)

    def _status(self, who: Principal, job_id: str) -> JobStatus:
        with self.sessions() as session:
            state = JobRepo(session).find_state(job_id, who.tenant_id) if _is_uuid(job_id) else None
        if state is None:
            raise JobNotFoundError("no such job")
        return JobStatus(state[0])

    def list_jobs(
        self,
        who: Principal,
        *,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent_id: str | None = None,
    ) -> JobPage:
        """Top-level jobs, or with `parent_id` that job's sub-jobs."""
        if parent_id is not None and not _is_uuid(parent_id):
            raise SpecError("parent_id: not a job id")
        query = JobPageQuery(
            tenant_id=who.tenant_id,
            limit=_check_limit(limit),
            kind=get_entry(kind).kind.value if kind else None,
            status=_parse_status(status) if status else None,
            before=_decode_job_cursor(cursor) if cursor else None,
            parent_id=parent_id,
        )
        with self.sessions() as session:
            rows = JobRepo(session).page(query)
        next_cursor = _encode_job_cursor(rows[-1]) if len(rows) == query.limit else None
        return JobPage(data=[JobView.from_row(r) for r in rows], next_cursor=next_cursor)

    @staticmethod
    def job_cursor(job: JobView) -> str:
        """The `cursor` that lists the jobs after `job` (older ones)."""
        return _encode_job_cursor(job)

    def cancel(self, who: Principal, job_id: str) -> JobView:
        with self.sessions.begin() as session:
            row = self._row(session, who, job_id)
            current = JobStatus(row.status)
            if current is JobStatus.CANCELLING:
                return JobView.from_row(row)
            target = JobStatus.CANCELLED if current is JobStatus.QUEUED else JobStatus.CANCELLING
            check_transition(current, target)
            now = datetime.now(UTC)
            values: dict[str, Any] = {"status": target.value, "cancel_requested_at": now}
            if target is JobStatus.CANCELLED:
                values["finished_at"] = now
            if not JobRepo(session).update_where(job_id, statuses=[current.value], values=values):
                raise SpecError("the job changed status while being cancelled; retry")
            AuditRepo(session).add(audit_event(who, "job.cancel_requested", {}, job_id=job_id))
            deliveries = []
            if target is JobStatus.CANCELLED:
                deliveries = self._record_end(session, row, target)
        if target is JobStatus.CANCELLED:
            self._announce_end(job_id, target, deliveries)
        else:
            self.events.request_cancel(job_id)
        return self.get(who, job_id)

    def audit(self, who: Principal, *, limit: int = 50, cursor: str | None = None) -> AuditPage:
        before = _decode_int_cursor(cursor) if cursor else None
        with self.sessions() as session:
            rows = AuditRepo(session).page(who.tenant_id, _check_limit(limit), before)
        next_cursor = str(rows[-1].id) if len(rows) == limit else None
        return AuditPage(data=[AuditView.from_row(r) for r in rows], next_cursor=next_cursor)

    def job_audit(self, who: Principal, job_id: str, limit: int = 100) -> list[AuditView]:
        """The masked audit events of one of the tenant's jobs (404 for anyone else's)."""
        with self.sessions() as session:
            self._row(session, who, job_id)
            rows = AuditRepo(session).for_job(who.tenant_id, job_id, limit)
            return [AuditView.from_row(r) for r in rows]

    def _row(self, session: Session, who: Principal, job_id: str) -> JobRow:
        row = JobRepo(session).find(job_id, tenant_id=who.tenant_id) if _is_uuid(job_id) else None
        if row is None:
            raise JobNotFoundError("no such job")
        return row

    def _new_row(
        self,
        who: Principal,
        entry: KindEntry,
        parsed: BaseModel,
        priority: int,
        idempotency_key: str | None,
        request_hash: str,
    ) -> tuple[JobRow, dict[str, int]]:
        masked, counts = mask_spec(entry, parsed, self.masker)
        row = JobRow(
            id=str(uuid.uuid4()),
            tenant_id=who.tenant_id,
            kind=entry.kind.value,
            status=JobStatus.QUEUED.value,
            priority=priority,
            actor=who.key_id,
            spec=masked,
            attempt=0,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            created_at=datetime.now(UTC),
        )
        return row, counts

    def _commit_new(
        self, who: Principal, entry: KindEntry, row: JobRow, counts: dict[str, int]
    ) -> None:
        with self.sessions.begin() as session:
            JobRepo(session).insert(row)  # first: the audit event references it
            event = audit_event(who, "job.submitted", row.spec, counts, job_id=row.id)
            AuditRepo(session).insert(event)
            if entry.on_submit is not None:
                entry.on_submit(session, job=row)

    def _dispatch(self, entry: KindEntry, row: JobRow) -> bool:
        """Publish after commit. A job the broker does not take stays queued, unmarked,
        for the outbox sweep (jobs.dispatch); False then."""
        return not self.dispatcher.dispatch(entry, [row.id])

    def _abandon(self, row: JobRow) -> None:
        """End a job nobody will wait for: its caller gets a 503 and must not find it run
        later by the outbox sweep."""
        now = datetime.now(UTC)
        values = {"status": JobStatus.FAILED.value, "finished_at": now, **_BROKER_DOWN}
        deliveries: list[str] = []
        with self.sessions.begin() as session:
            ended = JobRepo(session).update_where(
                row.id, statuses=[JobStatus.QUEUED.value], values=values
            )
            if ended:
                deliveries = self._record_end(session, row, JobStatus.FAILED)
        if ended:
            self._announce_end(row.id, JobStatus.FAILED, deliveries)

    def _record_end(self, session: Session, row: JobRow, status: JobStatus) -> list[str]:
        """The webhook deliveries of a job ended here, in the terminal write's transaction."""
        if self.outbox is None:
            return []
        ended = Ended(row.id, row.tenant_id, row.kind, status.value, row.parent_id)
        return self.outbox.record(session, [ended])

    def _announce_end(self, job_id: str, status: JobStatus, deliveries: list[str]) -> None:
        """After the commit: wake the job's waiters and send its webhooks."""
        self.events.announce(job_id, status.value)
        if self.outbox is not None:
            self.outbox.publish(deliveries)

    def _replay(self, who: Principal, key: str, request_hash: str) -> Submitted | None:
        with self.sessions() as session:
            row = JobRepo(session).find_by_idempotency_key(who.tenant_id, key)
        if row is None:
            return None
        if not hmac.compare_digest(row.request_hash or "", request_hash):
            raise IdempotencyConflictError("idempotency key already used for a different request")
        if row.status == JobStatus.QUEUED.value:
            # Its first publish may have failed (broker down): the replay re-publishes.
            self._dispatch(get_entry(row.kind), row)
        return Submitted(job=JobView.from_row(row), created=False)

    def _request_hash(self, entry: KindEntry, parsed: BaseModel, priority: int) -> str:
        # Keyed, so the stored hash reveals nothing about the (unmasked) request.
        body = {"kind": entry.kind.value, "spec": parsed.model_dump(mode="json"), "p": priority}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self.request_key, canonical, hashlib.sha256).hexdigest()


_BROKER_DOWN = {
    "error_type": "broker_unavailable",
    "error_message": "the broker was down when the job was submitted; the caller got a 503",
}


def audit_event(
    who: Principal,
    action: str,
    masked: dict[str, Any],
    counts: dict[str, int] | None = None,
    job_id: str | None = None,
) -> AuditEventRow:
    """An audit event of `who` doing `action`, with the already-masked input."""
    return AuditEventRow(
        tenant_id=who.tenant_id,
        job_id=job_id,
        actor=who.key_id,
        action=action,
        masked_input=masked,
        entity_counts=counts or {},
        policy_version=POLICY_VERSION,
        created_at=datetime.now(UTC),
    )


def mask_spec(
    entry: KindEntry, parsed: BaseModel, masker: PiiMasker
) -> tuple[dict[str, Any], dict[str, int]]:
    """The spec as JSON with every PII field masked, and the entity counts by type.

    A PII field may hold text, lists and objects (chat messages, documents with metadata):
    every string inside is masked, and so is every number whose digits hold personal
    data (a card number given as an integer becomes its masked text)."""
    data = parsed.model_dump(mode="json")
    counts: Counter[str] = Counter()
    for field in entry.pii_fields:
        if field in data:
            data[field] = _mask_value(data[field], masker, counts)
    return data, dict(counts)


# Keys inside PII fields that hold identifiers seekq made, not user text: masking could
# only break them (a long hex file id may hold a digit run that looks like a card number).
NOT_TEXT_KEYS = frozenset({"file_id", "role"})


def _mask_value(value: Any, masker: PiiMasker, counts: Counter[str]) -> Any:
    if isinstance(value, str):
        masked = masker.mask(value)
        counts.update(masked.counts)
        return masked.text
    if isinstance(value, dict):
        return {
            key: item if key in NOT_TEXT_KEYS else _mask_value(item, masker, counts)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask_value(item, masker, counts) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        masked = masker.mask(str(value))
        if masked.counts:
            counts.update(masked.counts)
            return masked.text
    return value


def _parse_status(status: str) -> str:
    try:
        return JobStatus(status).value
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise SpecError(f"status: expected one of: {known}") from None


def _check_priority(priority: int) -> None:
    if type(priority) is not int or not 0 <= priority <= 9:
        raise SpecError("priority: must be an integer from 0 (lowest) to 9 (highest)")


def _check_idempotency_key(key: str) -> None:
    if not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise SpecError("idempotency_key: 1-255 printable ASCII characters without spaces")


def _check_limit(limit: int) -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise SpecError(f"limit: must be an integer from 1 to {MAX_PAGE}")
    return limit


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _encode_job_cursor(row: JobRow | JobView) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_job_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise SpecError("cursor: not a cursor returned by this API") from None


def _decode_int_cursor(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 18:
        raise SpecError("cursor: not a cursor returned by this API")
    return int(cursor)

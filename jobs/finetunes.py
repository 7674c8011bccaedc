"""Fine-tune jobs, the producer side: check a request in full before it is queued, and
serve the job, its events and its cancel in OpenAI's shapes.

Everything that can be known before training is checked at submit (OpenAI users
complain that data errors surface only after a job starts): the base model and its chat
template, the adapter name, LoRA targets that break mixed-adapter batching, the files'
purpose, every example's token length against the model's context.
"""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from jobs.adapters import name_taken
from jobs.catalog import JobKind
from jobs.datasets import check_lengths
from jobs.errors import AdapterExistsError, JobNotFoundError, SpecError
from jobs.files import FileService
from jobs.finetune_records import (
    FineTuneCreate,
    FineTuningEventPage,
    FineTuningEventView,
    FineTuningJobPage,
    FineTuningJobView,
    event_id_of,
    job_id_of,
)
from jobs.finetune_specs import EXPERT_PROJECTIONS, MOE_MODEL_TYPES, FineTuneSpec
from jobs.keys import Principal
from jobs.records import JobView
from jobs.registry import ModelKind, ModelRegistry, read_model_config, resolve_source
from jobs.service import JobService
from jobs.status import IN_FLIGHT, JobStatus
from storage.finetune_repos import FineTuneEventRepo
from storage.repos import JobPageQuery, JobRepo
from storage.tables import FineTuneEventRow

MAX_PAGE = 100


@dataclass(frozen=True)
class DatasetStats:
    examples: int
    tokens: int


class FineTuneService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        jobs: JobService,
        files: FileService,
        models: ModelRegistry,
    ) -> None:
        self.sessions = sessions
        self.jobs = jobs
        self.files = files
        self.models = models

    # --- submit -------------------------------------------------------------------------

    def create(
        self, who: Principal, body: FineTuneCreate, idempotency_key: str | None = None
    ) -> FineTuningJobView:
        """`POST /v1/fine_tuning/jobs`: the OpenAI request as a seekq finetune job."""
        spec: dict[str, Any] = {
            "model": body.model,
            "training_file": body.training_file,
            "adapter": body.suffix or _default_name(idempotency_key),
            "hyperparameters": body.hyperparameters_dict(),
        }
        if body.validation_file is not None:
            spec["validation_file"] = body.validation_file
        if body.metadata:
            spec["metadata"] = body.metadata
        submitted = self.jobs.submit(who, "finetune", spec, idempotency_key=idempotency_key)
        return FineTuningJobView.from_job(submitted.job, who.tenant_name)

    def check(self, who: Principal, parsed: BaseModel) -> None:
        """The kind check JobService runs before a finetune job is committed (registered
        in `JobsContext.create`)."""
        assert isinstance(parsed, FineTuneSpec)
        if self.jobs.masker.mask(parsed.adapter).counts:
            raise SpecError("suffix: an adapter's name must not hold personal data")
        entry = self.models.get(parsed.model, ModelKind.CAUSAL_LM)
        _check_targets(parsed, read_model_config(resolve_source(entry.source)) or {})
        self._check_name_free(who, parsed)
        fmt = self.jobs.prompts.get(entry)
        only = parsed.hyperparameters.completion_only
        training = self.files.examples(who.tenant_id, parsed.training_file).examples
        check_lengths(training, fmt, fmt.context_length, "training file", completion_only=only)
        if parsed.validation_file is not None:
            validation = self.files.examples(who.tenant_id, parsed.validation_file).examples
            check_lengths(
                validation, fmt, fmt.context_length, "validation file", completion_only=only
            )

    def _check_name_free(self, who: Principal, spec: FineTuneSpec) -> None:
        """An early, friendly answer; the job's commit reserves the name for good."""
        with self.sessions.begin() as session:
            taken = name_taken(session, who.tenant_id, spec)
        if taken is not None:
            raise AdapterExistsError(taken)

    # --- read ---------------------------------------------------------------------------

    def get(self, who: Principal, fine_tuning_job_id: str) -> FineTuningJobView:
        return self._view(who, self._job(who, fine_tuning_job_id))

    def page(self, who: Principal, after: str | None, limit: int) -> FineTuningJobPage:
        limit = _check_limit(limit)
        before = None
        with self.sessions() as session:
            if after is not None:
                row = JobRepo(session).find(job_id_of(after), who.tenant_id)
                if row is None or row.kind != JobKind.FINETUNE.value:
                    raise SpecError("after: not a fine-tuning job id of this tenant")
                before = (row.created_at, row.id)
            query = JobPageQuery(
                tenant_id=who.tenant_id, limit=limit + 1, kind="finetune", before=before
            )
            rows = JobRepo(session).page(query)
        views = [self._view(who, JobView.from_row(r)) for r in rows[:limit]]
        return FineTuningJobPage(data=views, has_more=len(rows) > limit)

    def events(
        self, who: Principal, fine_tuning_job_id: str, after: str | None, limit: int
    ) -> FineTuningEventPage:
        """Newest first, as OpenAI lists them; `after` continues with older events."""
        job = self._job(who, fine_tuning_job_id)
        limit = _check_limit(limit)
        before = event_id_of(after) if after is not None else None
        with self.sessions() as session:
            rows = FineTuneEventRepo(session).page(job.id, limit + 1, before)
            views = [FineTuningEventView.from_row(r) for r in rows[:limit]]
        return FineTuningEventPage(data=views, has_more=len(rows) > limit)

    def cancel(self, who: Principal, fine_tuning_job_id: str) -> FineTuningJobView:
        """A queued job ends at once; a running one stops within one training step and
        keeps its last checkpoint."""
        job = self._job(who, fine_tuning_job_id)
        cancelled = self.jobs.cancel(who, job.id)
        if cancelled.status == JobStatus.CANCELLED.value and job.status == JobStatus.QUEUED.value:
            self.record(job.id, who.tenant_id, "Fine-tuning job cancelled while queued")
        return self._view(who, cancelled)

    def record(
        self,
        job_id: str,
        tenant_id: str,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        kind: str = "message",
        level: str = "info",
        attempt: int | None = None,
    ) -> bool:
        """Add one event to a fine-tune job (workers report steps and checkpoints here).
        With `attempt`, only while that attempt still runs the job: a stale attempt's
        steps never mix with the live one's. False when nothing was written."""
        row = FineTuneEventRow(
            job_id=job_id,
            tenant_id=tenant_id,
            level=level,
            type=kind,
            message=message,
            data=data or {},
            created_at=datetime.now(UTC),
        )
        with self.sessions.begin() as session:
            if attempt is not None:
                state = JobRepo(session).find_state(job_id)
                if state is None or state[1] != attempt or state[0] not in IN_FLIGHT:
                    return False
            FineTuneEventRepo(session).add(row)
        return True

    def _job(self, who: Principal, fine_tuning_job_id: str) -> JobView:
        job = self.jobs.get(who, job_id_of(fine_tuning_job_id))
        if job.kind != JobKind.FINETUNE.value:
            raise JobNotFoundError("no such fine-tuning job")
        return job

    @staticmethod
    def _view(who: Principal, job: JobView) -> FineTuningJobView:
        return FineTuningJobView.from_job(job, who.tenant_name)


def _default_name(idempotency_key: str | None) -> str:
    """`ft-<12 hex>`; from the idempotency key when there is one, so a retried request
    is the same request (and replays its job instead of conflicting)."""
    if idempotency_key is None:
        return f"ft-{uuid.uuid4().hex[:12]}"
    return "ft-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]


def _check_targets(spec: FineTuneSpec, config: dict[str, Any]) -> None:
    """Refuse LoRA targets that would wrap routed experts (no mixed-adapter batches)."""
    targets = spec.hyperparameters.target_modules
    moe = str(config.get("model_type", "")) in MOE_MODEL_TYPES
    wrapped = sorted(set(targets or ()) & EXPERT_PROJECTIONS) if moe else []
    if wrapped:
        raise SpecError(
            f"hyperparameters.target_modules: {', '.join(wrapped)} would put LoRA on the "
            f"routed experts of this {config.get('model_type')} model, which peft cannot serve "
            "in mixed-adapter batches; target the attention projections"
        )


def _check_limit(limit: int) -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise SpecError(f"limit: must be an integer from 1 to {MAX_PAGE}")
    return limit

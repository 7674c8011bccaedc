"""Each job kind declared once: spec, result, queue, task name, time limit, PII fields.

Routes, Celery tasks, routing, validation and masking are all derived from this table.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.orm import Session

from jobs.adapters import register_adapter, reserve_adapter
from jobs.batch_specs import BatchResult, BatchSpec
from jobs.errors import KindNotAvailableError, SpecError
from jobs.finetune_specs import FineTuneResult, FineTuneSpec
from jobs.index_specs import IndexResult, IndexSpec, SearchResult, SearchSpec
from jobs.lifecycle import Effect
from jobs.registry import SERVING_QUEUES, ModelKind
from jobs.specs import (
    EmbedResult,
    EmbedSpec,
    GenerateResult,
    GenerateSpec,
    PingResult,
    PingSpec,
    StrictModel,
    describe_validation_error,
)
from jobs.strict_json import find_unstorable
from jobs.webhooks import WEBHOOK_QUEUE
from storage.tables import JobRow


class SubmitEffect(Protocol):
    """Rows a job's submit writes with it, in the same transaction as the job row."""

    def __call__(self, session: Session, *, job: JobRow) -> None: ...


class JobKind(StrEnum):
    EMBED = "embed"
    GENERATE = "generate"
    INDEX = "index"
    SEARCH = "search"
    FINETUNE = "finetune"
    BATCH = "batch"
    PING = "ping"


@dataclass(frozen=True)
class KindEntry:
    kind: JobKind
    spec_model: type[StrictModel]
    result_model: type[BaseModel]
    queue: str
    time_limit_s: float
    # Spec fields holding user text (a str, a list of str, or a list of chat messages whose
    # `content` is text): masked before storing/queueing.
    pii_fields: tuple[str, ...]
    # The kind of model the spec's `model` field must name (None: the kind takes no model).
    model_kind: ModelKind | None = None
    # Rows written with the job's submit / its success, in the same transaction as the job
    # row / its succeeded write (a fine-tune reserves its adapter's name, then readies it).
    on_submit: SubmitEffect | None = None
    on_success: Effect | None = None

    @property
    def task_name(self) -> str:
        return f"seekq.{self.kind.value}"

    @property
    def soft_time_limit_s(self) -> float:
        return self.time_limit_s * 0.9

    def limited(self, limits_s: Mapping[str, float]) -> "KindEntry":
        """This entry with the operator's time limit for its kind (SEEKQ_TIME_LIMITS_S)."""
        limit_s = limits_s.get(self.kind.value)
        return self if limit_s is None else dataclasses.replace(self, time_limit_s=limit_s)


# Kinds with no entry yet are known (so the API can say so) but cannot be submitted.
CATALOG: Mapping[JobKind, KindEntry] = {
    # Embed and generate jobs go to their model's own queue when it has one (jobs.queue).
    JobKind.EMBED: KindEntry(
        JobKind.EMBED,
        EmbedSpec,
        EmbedResult,
        SERVING_QUEUES[ModelKind.EMBEDDING],
        600.0,
        ("input",),
        ModelKind.EMBEDDING,
    ),
    JobKind.GENERATE: KindEntry(
        JobKind.GENERATE,
        GenerateSpec,
        GenerateResult,
        SERVING_QUEUES[ModelKind.CAUSAL_LM],
        1800.0,
        ("prompt", "messages"),
        ModelKind.CAUSAL_LM,
    ),
    # The index's own model is checked when the index is created; the job names the index.
    JobKind.INDEX: KindEntry(
        JobKind.INDEX, IndexSpec, IndexResult, "cpu.index", 3600.0, ("documents", "delete")
    ),
    # Its own queue and worker: searches never wait behind embedding or indexing work.
    JobKind.SEARCH: KindEntry(
        JobKind.SEARCH, SearchSpec, SearchResult, "cpu.search", 60.0, ("query", "filter")
    ),
    # Hours on a GPU; the lease (renewed while it runs) and its checkpoints make it safe to
    # outlive Redis's visibility timeout. Its adapter is registered with its success.
    JobKind.FINETUNE: KindEntry(
        JobKind.FINETUNE,
        FineTuneSpec,
        FineTuneResult,
        "gpu.finetune",
        24 * 3600.0,
        ("metadata",),
        ModelKind.CAUSAL_LM,
        on_submit=reserve_adapter,
        on_success=register_adapter,
    ),
    # An OpenAI batch: its lines run as generate/embed sub-jobs; it follows them in SQL
    # for up to its completion window (24 h), then assembles the output files.
    JobKind.BATCH: KindEntry(
        JobKind.BATCH, BatchSpec, BatchResult, "cpu.batch", 25 * 3600.0, ("metadata",)
    ),
    JobKind.PING: KindEntry(JobKind.PING, PingSpec, PingResult, "cpu.ping", 30.0, ("payload",)),
}


def get_entry(kind: JobKind | str) -> KindEntry:
    """The catalog entry of `kind`; raises SpecError for unknown or not-yet-available kinds."""
    try:
        job_kind = JobKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in JobKind)
        raise SpecError(f"unknown job kind; expected one of: {known}") from None
    entry = CATALOG.get(job_kind)
    if entry is None:
        raise KindNotAvailableError(f"job kind '{job_kind.value}' is not available in this release")
    return entry


def queues() -> list[str]:
    """Every queue a worker may consume: one per kind, and the webhooks queue (models'
    own queues come with the registry: ModelRegistry.own_queues)."""
    return sorted({entry.queue for entry in CATALOG.values()} | {WEBHOOK_QUEUE})


def parse_spec(entry: KindEntry, raw: Mapping[str, Any]) -> BaseModel:
    """Validate a raw (JSON-decoded) spec; the error never echoes the submitted values.
    Text no store can keep (NUL, lone surrogates) is refused here too: an in-cluster
    producer's spec never went through the gateway's strict JSON."""
    problem = find_unstorable(raw)
    if problem is not None:
        raise SpecError(f"spec: {problem}")
    try:
        return entry.spec_model.model_validate(raw)
    except PydanticValidationError as exc:
        raise SpecError(describe_validation_error(exc)) from None

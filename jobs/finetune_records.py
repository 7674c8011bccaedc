"""OpenAI's fine-tuning shapes: the create request, the job object and its events.

A fine-tune is a seekq job of kind `finetune`; its OpenAI id is `ftjob-<job uuid hex>`.
"""

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.errors import JobNotFoundError, SpecError
from jobs.finetune_specs import ADAPTER_NAME_PATTERN, FineTuneHyperparameters
from jobs.records import JobView
from storage.tables import FineTuneEventRow

JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
DEFAULT_LEARNING_RATE: float = FineTuneHyperparameters.model_fields["learning_rate"].default

OPENAI_STATUS = {
    "queued": "queued",
    "running": "running",
    "cancelling": "running",  # OpenAI has no such status; it ends within one step
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


def openai_job_id(job_id: str) -> str:
    return JOB_PREFIX + uuid.UUID(job_id).hex


def job_id_of(fine_tuning_job_id: str) -> str:
    """The seekq job id of `ftjob-<hex>` (a plain job id is accepted too)."""
    raw = fine_tuning_job_id.removeprefix(JOB_PREFIX)
    try:
        return str(uuid.UUID(hex=raw)) if len(raw) == 32 else str(uuid.UUID(raw))
    except ValueError:
        raise JobNotFoundError("no such fine-tuning job") from None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class OpenAIHyperparameters(_Request):
    batch_size: int | Literal["auto"] | None = Field(default=None)
    learning_rate_multiplier: float | Literal["auto"] | None = Field(default=None)
    n_epochs: int | Literal["auto"] | None = Field(default=None)


class SupervisedMethod(_Request):
    hyperparameters: OpenAIHyperparameters | None = None


class FineTuneMethod(_Request):
    type: Literal["supervised"]  # DPO and reinforcement fine-tuning are not offered
    supervised: SupervisedMethod | None = None


class FineTuneCreate(_Request):
    """`client.fine_tuning.jobs.create(...)`; seekq's own settings (LoRA rank, steps...)
    go in `seekq` (with the openai package: `extra_body={"seekq": {...}}`)."""

    model: Annotated[str, Field(min_length=1, max_length=128)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(max_length=64)] | None = None
    suffix: Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN, max_length=64)] | None = Field(
        default=None, description="the adapter's name: the model becomes <model>:<suffix>"
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    hyperparameters: OpenAIHyperparameters | None = None
    method: FineTuneMethod | None = None
    metadata: dict[str, str] | None = None
    integrations: Annotated[list[Any], Field(max_length=0)] | None = Field(
        default=None, description="not supported: must be empty"
    )
    seekq: dict[str, Any] | None = Field(
        default=None, description="FineTuneHyperparameters fields, over the OpenAI ones"
    )

    def hyperparameters_dict(self) -> dict[str, Any]:
        """The spec's hyperparameters: OpenAI's (method first), then seekq's on top."""
        given = self.hyperparameters
        if self.method is not None and self.method.supervised is not None:
            given = self.method.supervised.hyperparameters or given
        values: dict[str, Any] = {}
        if given is not None:
            if isinstance(given.n_epochs, int):
                values["n_epochs"] = given.n_epochs
            if isinstance(given.batch_size, int):
                values["batch_size"] = given.batch_size
            if isinstance(given.learning_rate_multiplier, float | int):
                values["learning_rate"] = DEFAULT_LEARNING_RATE * given.learning_rate_multiplier
        if self.seed is not None:
            values["seed"] = self.seed
        return {**values, **(self.seekq or {})}


class FineTuningError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJobView(BaseModel):
    """OpenAI's fine_tuning.job object; `seekq` adds the job's own status and progress."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None
    method: dict[str, Any]
    seekq: dict[str, Any]

    @classmethod
    def from_job(cls, job: JobView, organization: str) -> "FineTuningJobView":
        spec, result, progress = job.spec, job.result or {}, job.progress or {}
        params = FineTuneHyperparameters.model_validate(spec.get("hyperparameters") or {})
        openai_params = {
            "batch_size": params.batch_size,
            "learning_rate_multiplier": params.learning_rate / DEFAULT_LEARNING_RATE,
            "n_epochs": params.n_epochs,
        }
        error = None
        if job.error is not None:
            error = FineTuningError(code=job.error.type, message=job.error.message)
        succeeded = job.status == "succeeded"
        return cls(
            id=openai_job_id(job.id),
            created_at=_unix(job.created_at),
            error=error,
            fine_tuned_model=f"{spec['model']}:{spec['adapter']}" if succeeded else None,
            finished_at=_unix(job.finished_at) if job.finished_at else None,
            hyperparameters=openai_params,
            model=spec["model"],
            organization_id=organization,
            seed=params.seed,
            status=OPENAI_STATUS.get(job.status, job.status),
            trained_tokens=result.get("trained_tokens"),
            training_file=spec["training_file"],
            validation_file=spec.get("validation_file"),
            estimated_finish=_estimated_finish(job.status, progress),
            metadata=spec.get("metadata") or None,
            method={"type": "supervised", "supervised": {"hyperparameters": openai_params}},
            seekq={
                "job_id": job.id,
                "status": job.status,
                "attempts": job.attempts,
                "adapter": f"{spec['model']}:{spec['adapter']}",
                "hyperparameters": params.model_dump(mode="json"),
                "progress": _public_progress(progress),
                "result": job.result,
            },
        )


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def _estimated_finish(status: str, progress: dict[str, Any]) -> int | None:
    if status != "running" or progress.get("eta_s") is None or progress.get("at") is None:
        return None
    return int(progress["at"] + progress["eta_s"])


def _public_progress(progress: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in progress.items() if k != "checkpoint_key"}


class FineTuningJobPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobView]
    has_more: bool


class FineTuningEventView(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None
    type: str

    @classmethod
    def from_row(cls, row: FineTuneEventRow) -> "FineTuningEventView":
        return cls(
            id=f"{EVENT_PREFIX}{row.id}",
            created_at=_unix(row.created_at),
            level=row.level,
            message=row.message,
            data=row.data or None,
            type=row.type,
        )


class FineTuningEventPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningEventView]
    has_more: bool


def event_id_of(after: str) -> int:
    raw = after.removeprefix(EVENT_PREFIX)
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise SpecError("after: not an event id returned by this API")
    return int(raw)

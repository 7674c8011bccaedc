"""The batch job: run every line of an OpenAI batch input file as its own job.

A batch is a seekq job of kind `batch` (queue `cpu.batch`). Its runner turns each line
into a `generate` or `embed` sub-job (parent = the batch), dispatched through the normal
queues so workers batch them with everything else, follows them in SQL, and assembles
the output and error files in the input's order when they are done, cancelled or
expired.
"""

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field

from jobs.errors import JobNotFoundError
from jobs.index_specs import FILE_ID_PATTERN
from jobs.specs import StrictModel

BatchEndpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
# OpenAI accepts only "24h"; seekq also takes a number of seconds, minutes or hours
# (e.g. "90s", "10m", "2h") up to 24 h, for short-lived work and for tests.
BATCH_ID_PREFIX = "batch_"
WINDOW_PATTERN = r"^[1-9][0-9]{0,5}[smh]$"
MAX_WINDOW_S = 24 * 3600
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}


def openai_batch_id(job_id: str) -> str:
    return BATCH_ID_PREFIX + uuid.UUID(job_id).hex


def job_id_of(batch_id: str) -> str:
    raw = batch_id.removeprefix(BATCH_ID_PREFIX)
    if not re.fullmatch(r"[0-9a-f]{32}", raw):
        raise JobNotFoundError("no such batch")
    return str(uuid.UUID(hex=raw))


def window_seconds(window: str) -> int:
    match = re.fullmatch(WINDOW_PATTERN, window)
    if match is None:
        raise ValueError("completion_window: expected 24h (or a number of s, m or h)")
    seconds = int(window[:-1]) * WINDOW_UNITS[window[-1]]
    if seconds > MAX_WINDOW_S:
        raise ValueError("completion_window: at most 24h")
    return seconds


class BatchSpec(StrictModel):
    input_file_id: Annotated[str, Field(pattern=FILE_ID_PATTERN, max_length=40)]
    endpoint: BatchEndpoint
    completion_window_s: int = Field(ge=1, le=MAX_WINDOW_S)
    completion_window: Annotated[str, Field(pattern=WINDOW_PATTERN, max_length=8)] = "24h"
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = (
        Field(default_factory=dict, max_length=16)
    )


BatchOutcome = Literal["completed", "expired", "cancelled"]


class BatchResult(StrictModel):
    outcome: BatchOutcome
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    # When each phase began (unix seconds), for the OpenAI batch object.
    in_progress_at: int | None = None
    finalizing_at: int | None = None

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "BatchResult":
        return cls.model_construct(**data)

"""Server-sent events for running jobs: the job's Redis token stream, finished from SQL.

`JobStream.events()` yields each `TextDelta` the worker writes (jobs.streams), then one
`JobEnd` carrying the job as SQL holds it. SQL is the truth: the job is read from SQL after
the stream's end entry, and also whenever no entry came for IDLE_S (no end entry was
written, the stream expired, or the job does not stream at all). Stored text beyond what
was streamed is sent as one last delta, so a reader's text equals the stored text.

`openai_events` and `native_events` turn those events into SSE lines. A client that
disconnects only stops the reading; the job runs on.
"""

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from api_gateway.errors import error_body, status_for
from jobs.errors import (
    JobTimeoutError,
    SeekqError,
    StreamRestartedError,
)
from jobs.keys import Principal
from jobs.openai_formats import completion_usage, generate_result_of
from jobs.records import JobView
from jobs.service import JobService
from jobs.status import JobStatus, is_terminal
from jobs.streams import DELTA_FIELD, END_FIELD, RESTART_FIELD, stream_key

log = logging.getLogger(__name__)

# With no stream entry for this long, the reader checks the job in SQL.
IDLE_S = 1.0
# How long SQL may lag behind the stream's end entry.
END_GRACE_S = 5.0
READ_COUNT = 256
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def connect(broker_url: str) -> AsyncRedis:
    """The gateway's async Redis client for reading streams (one per app)."""
    return AsyncRedis.from_url(
        broker_url, decode_responses=True, socket_connect_timeout=2, socket_timeout=IDLE_S + 5
    )


def get_stream_redis(request: Request) -> AsyncRedis:
    redis: AsyncRedis = request.app.state.stream_redis
    return redis


StreamRedisDep = Annotated[AsyncRedis, Depends(get_stream_redis)]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Restarted:
    """The job started over on another worker after text was already sent."""


@dataclass(frozen=True)
class JobEnd:
    job: JobView | None  # None: the deadline passed first


@dataclass
class JobStream:
    """One job's events for one reader, until the job is terminal or `timeout_s` passes."""

    redis: AsyncRedis
    service: JobService
    who: Principal
    job_id: str
    timeout_s: float

    async def events(self) -> AsyncIterator[TextDelta | Restarted | JobEnd]:
        deadline = time.monotonic() + self.timeout_s
        streamed: list[str] = []
        cursor = "0-0"
        while time.monotonic() < deadline:
            entries = await self._read(cursor)
            for entry_id, fields in entries:
                cursor = entry_id
                if RESTART_FIELD in fields and streamed:
                    yield Restarted()
                    return
                if DELTA_FIELD in fields:
                    streamed.append(fields[DELTA_FIELD])
                    yield TextDelta(fields[DELTA_FIELD])
            ended = any(END_FIELD in fields for _, fields in entries)
            if ended or not entries:
                grace_s = min(END_GRACE_S, deadline - time.monotonic()) if ended else 0.0
                job = await self._terminal_job(grace_s)
                if job is not None:
                    rest = unsent_text(job, "".join(streamed))
                    if rest:
                        yield TextDelta(rest)
                    yield JobEnd(job)
                    return
        yield JobEnd(None)

    async def _read(self, cursor: str) -> list[tuple[str, dict[str, str]]]:
        key = stream_key(self.job_id)
        try:
            # A RESP2 reply (connect() keeps the default protocol): [[key, [(id, fields)]]].
            reply: Any = await self.redis.xread(
                {key: cursor}, count=READ_COUNT, block=int(IDLE_S * 1000)
            )
        except RedisError as exc:  # SQL still answers: poll it at the idle pace
            log.warning("stream read failed job_id=%s error=%s", self.job_id, type(exc).__name__)
            await anyio.sleep(IDLE_S)
            return []
        return list(reply[0][1]) if reply else []

    async def _terminal_job(self, wait_s: float) -> JobView | None:
        if wait_s > 0:
            job = await run_in_threadpool(self.service.wait, self.who, self.job_id, wait_s)
        else:
            job = await run_in_threadpool(self.service.get, self.who, self.job_id)
        return job if is_terminal(JobStatus(job.status)) else None


def unsent_text(job: JobView, streamed: str) -> str:
    """The stored text after what was streamed ("" when the stream was not a prefix of it:
    what a client already has cannot be taken back)."""
    text = (job.result or {}).get("text")
    if not isinstance(text, str):
        return ""
    if not text.startswith(streamed):
        log.warning("streamed text is not a prefix of the stored text job_id=%s", job.id)
        return ""
    return text[len(streamed) :]


def restarted_error(job_id: str) -> StreamRestartedError:
    return StreamRestartedError(
        f"job {job_id} started over on another worker after a failure; its text starts "
        f"again: read the result at GET /v1/jobs/{job_id}"
    )


def late_error(job_id: str, timeout_s: float) -> JobTimeoutError:
    return JobTimeoutError(
        f"job {job_id} did not finish within {timeout_s:g}s; poll GET /v1/jobs/{job_id}"
    )


def sse(data: dict[str, Any] | str, event: str | None = None) -> str:
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n"


def error_event(exc: SeekqError, event: str | None = None) -> str:
    _, code = status_for(exc)
    return sse(error_body(str(exc), code), event)


@dataclass(frozen=True)
class ChunkFormat:
    """What every chunk of one OpenAI stream shares: chat or text completion, id, model."""

    chat: bool
    id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body: dict[str, Any] = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return sse(body)

    def choice(self, text: str | None, finish_reason: str | None = None) -> str:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            choice["delta"] = {} if text is None else {"content": text}
        else:
            choice["text"] = text or ""
        return self.chunk([choice])

    def role(self) -> str:
        delta = {"role": "assistant", "content": ""}
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}])


async def openai_events(stream: JobStream, fmt: ChunkFormat) -> AsyncIterator[str]:
    """OpenAI's stream: (chat: a role chunk,) text chunks, a finish chunk, the usage chunk
    when asked for, then [DONE]. A failed, cancelled or late job ends with an error event
    (the `openai` package raises APIError on it) and no [DONE]."""
    if fmt.chat:
        yield fmt.role()
    async for event in stream.events():
        if isinstance(event, TextDelta):
            yield fmt.choice(event.text)
            continue
        if isinstance(event, Restarted):
            yield error_event(restarted_error(stream.job_id))
            return
        if event.job is None:
            yield error_event(late_error(stream.job_id, stream.timeout_s))
            return
        try:
            result = generate_result_of(event.job)
        except SeekqError as exc:
            yield error_event(exc)
            return
        yield fmt.choice(None, result.finish_reason)
        if fmt.include_usage:
            yield fmt.chunk([], completion_usage(result).model_dump())
        yield sse("[DONE]")


async def native_events(stream: JobStream) -> AsyncIterator[str]:
    """seekq's stream: `event: token` {"text"} per delta, then `event: done` with the job
    (whatever its final status), or `event: error` when the deadline passes first."""
    async for event in stream.events():
        if isinstance(event, TextDelta):
            yield sse({"text": event.text}, "token")
        elif isinstance(event, Restarted):
            yield error_event(restarted_error(stream.job_id), "error")
        elif event.job is None:
            yield error_event(late_error(stream.job_id, stream.timeout_s), "error")
        else:
            yield sse(event.job.model_dump_json(), "done")

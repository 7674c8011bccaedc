"""Token streams: text made by a running generate job, worker -> Redis stream -> gateway.

One Redis stream per job (`seekq:stream:<job id>`), written only for specs with
`stream: true`. Entries are {"d": text} for each piece of new text and, last, {"end":
finish_reason} ("stop", "length", "cancelled" or "error"). A later attempt (the job was
taken over after a worker died) first writes {"restart": attempt}: its text starts over,
so a reader that already sent text from the earlier attempt must not append to it.

A stream is a hint for live readers, never the source of truth: SQL holds the final text,
and a reader that sees no entry for a while re-reads the job from SQL. Streams expire
STREAM_TTL_S after their last write, so a late reader still gets every entry.

A stream carries generated text only: prompts never reach Redis unmasked (they are masked
at submit, and the prompt is not written here at all).
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STREAM_PREFIX = "seekq:stream:"
STREAM_TTL_S = 3600
# Entries kept per stream (approximate trim); far more than MAX_NEW_TOKENS pieces.
STREAM_MAXLEN = 8192
DELTA_FIELD = "d"
END_FIELD = "end"
RESTART_FIELD = "restart"


def stream_key(job_id: str) -> str:
    return f"{STREAM_PREFIX}{job_id}"


@dataclass(frozen=True)
class StreamEntry:
    """One write: new text for a job, or its end (with the finish reason)."""

    job_id: str
    delta: str = ""
    end: str | None = None
    restart: int | None = None

    def fields(self) -> dict[str, str]:
        if self.restart is not None:
            return {RESTART_FIELD: str(self.restart)}
        return {END_FIELD: self.end} if self.end is not None else {DELTA_FIELD: self.delta}


class TokenStreams:
    """Writes stream entries; all entries of one decoding step go in one round trip."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def write(self, entries: Iterable[StreamEntry]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        keys = set()
        for entry in entries:
            key = stream_key(entry.job_id)
            pipe.xadd(key, entry.fields(), maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            keys.add(key)
        if not keys:
            return
        for key in keys:
            pipe.expire(key, STREAM_TTL_S)
        try:
            pipe.execute()
        except RedisError as exc:  # readers fall back to SQL; the job goes on
            log.warning("stream write failed: %s", type(exc).__name__)

"""Per-tenant quotas, checked at submit: jobs in flight and enqueued tokens.

Over either quota a submit is refused with QuotaExceededError (429 + Retry-After) and
nothing is written, instead of the queue growing without bound. Both count a tenant's
top-level jobs that are queued or running (a batch counts once: its lines are held back
by the batch windows).

Enqueued tokens are input tokens, as OpenAI counts its batch queue limit: estimated at
submit from the masked request text, one token per BYTES_PER_TOKEN bytes of UTF-8 (about
right for English with a BPE tokenizer, an overestimate for code, an underestimate for
CJK text), so the gateway needs no tokenizer. A batch's estimate is its input file's,
made at upload.
"""

import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import QuotaExceededError, SpecError
from jobs.status import IN_FLIGHT
from storage.repos import JobRepo

BYTES_PER_TOKEN = 4
RECOUNT_S = 1.0
NEAR = 0.9  # counted afresh at every submit past this share of a quota


def text_tokens(value: Any) -> int:
    """Estimated tokens of the text in a request field: a string, a list of strings, or
    chat messages (their `content`, plain or in text parts)."""
    if isinstance(value, str):
        return math.ceil(len(value.encode("utf-8", "replace")) / BYTES_PER_TOKEN)
    if isinstance(value, list):
        return sum(text_tokens(item) for item in value)
    if isinstance(value, dict):
        return text_tokens(value.get("content", value.get("text", "")))
    return 0


def request_tokens(body: Mapping[str, Any]) -> int:
    """An OpenAI request body's input tokens (a batch line: prompt, messages or input)."""
    return sum(text_tokens(body.get(field)) for field in ("prompt", "messages", "input"))


def estimate_tokens(kind: str, spec: Mapping[str, Any]) -> int:
    """A job's enqueued input tokens (0 for kinds without request text to run)."""
    if kind == "generate":
        return text_tokens(spec.get("prompt")) + text_tokens(spec.get("messages"))
    if kind == "embed":
        return text_tokens(spec.get("input"))
    if kind == "index":
        return text_tokens(spec.get("documents"))
    return 0


class TenantQuota:
    """Counting in SQL at every submit cost ~0.25 ms (bench Q1), so a count far below
    the quotas is reused for up to RECOUNT_S (with this process's own submits added);
    near a quota it is counted afresh every time. Other processes' submits within that
    second can take a tenant at most that far past a quota it was well below."""

    def __init__(self, sessions: sessionmaker[Session], max_jobs: int, max_tokens: int) -> None:
        self.sessions = sessions
        self.max_jobs = max_jobs  # 0: no limit
        self.max_tokens = max_tokens  # 0: no limit
        self._cache: dict[str, tuple[int, int, float]] = {}  # tenant -> (jobs, tokens, until)
        self._lock = threading.Lock()

    def check(self, tenant_id: str, tokens: int) -> None:
        """Refuse (raise) when one more job of `tokens` would pass a quota."""
        if not self.max_jobs and not self.max_tokens:
            return
        if self.max_tokens and tokens > self.max_tokens:
            raise SpecError(
                f"this request has about {tokens} input tokens, more than the tenant's "
                f"enqueued-token quota of {self.max_tokens}: split it"
            )
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant_id)
            if cached is not None and cached[2] > now and self._far(cached[0], cached[1], tokens):
                self._cache[tenant_id] = (cached[0] + 1, cached[1] + tokens, cached[2])
                return
        with self.sessions() as session:
            jobs, queued = JobRepo(session).in_flight_totals(tenant_id, IN_FLIGHT)
        self._refuse_if_over(jobs, queued, tokens)
        with self._lock:
            self._cache[tenant_id] = (jobs + 1, queued + tokens, now + RECOUNT_S)

    def _far(self, jobs: int, queued: int, tokens: int) -> bool:
        jobs_far = not self.max_jobs or jobs + 1 < self.max_jobs * NEAR
        tokens_far = not self.max_tokens or queued + tokens < self.max_tokens * NEAR
        return jobs_far and tokens_far

    def _refuse_if_over(self, jobs: int, queued: int, tokens: int) -> None:
        if self.max_jobs and jobs >= self.max_jobs:
            raise QuotaExceededError(
                f"this tenant has {jobs} jobs queued or running, its quota is "
                f"{self.max_jobs}: retry once some have finished"
            )
        if self.max_tokens and queued + tokens > self.max_tokens:
            raise QuotaExceededError(
                f"this tenant has about {queued} input tokens queued or running; this "
                f"request's {tokens} would pass its quota of {self.max_tokens}: retry once "
                "some have finished"
            )

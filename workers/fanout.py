"""Fan-out / fan-in of embedding work through sub-jobs on the embed queue.

A parent job (an index job) splits its texts into batches of about `batch_tokens` tokens,
writes one embed job per batch (with `parent_id` and an idempotency key made of the parent,
the batch number and the batch's content), commits, publishes, then watches their statuses
in SQL until all succeeded. No Celery chord (on Redis they can hang: celery#3538) and no
result backend: SQL holds the sub-jobs' state and vectors. A retried parent finds the
sub-jobs of its earlier attempt by their keys and re-uses those that finished.
"""

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from jobs.catalog import CATALOG, JobKind
from jobs.context import JobsContext
from jobs.errors import JobCancelledError, PermanentError
from jobs.specs import MAX_EMBED_INPUTS
from jobs.status import JobStatus
from storage.index_repos import SubJobRepo
from storage.tables import JobRow

EMBED = CATALOG[JobKind.EMBED]
SUB_JOB_PRIORITY = 3
POLL_S = 0.2
RESULT_SLICE = 50
Report = Callable[["np.ndarray[Any, np.dtype[np.bool_]]"], dict[str, Any]]


def token_batches(tokens: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of about `budget` tokens (at least one text each)."""
    ranges: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, count in enumerate(tokens):
        full = used + count > budget or i - start >= MAX_EMBED_INPUTS
        if i > start and full:
            ranges.append((start, i))
            start, used = i, 0
        used += count
    if start < len(tokens):
        ranges.append((start, len(tokens)))
    return ranges


class EmbedFanOut:
    def __init__(
        self,
        context: JobsContext,
        *,
        parent_id: str,
        tenant_id: str,
        model: str,
        normalize: bool,
        batch_tokens: int,
    ) -> None:
        self.context = context
        self.parent_id = parent_id
        self.tenant_id = tenant_id
        self.model = model
        self.normalize = normalize
        self.batch_tokens = batch_tokens
        self.job_count = 0

    def run(
        self,
        texts: Sequence[str],
        tokens: Sequence[int],
        should_stop: Callable[[], bool],
        report: Report,
    ) -> "np.ndarray[Any, np.dtype[np.float32]]":
        """The texts' vectors, in order, once every sub-job succeeded."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        batches = token_batches(tokens, self.batch_tokens)
        job_ids = self._ensure_jobs(texts, batches)
        self.job_count = len(job_ids)
        self._wait(job_ids, batches, len(texts), should_stop, report)
        return self._collect(job_ids, batches)

    # ------------------------------------------------------------ fan out

    def _ensure_jobs(self, texts: Sequence[str], batches: list[tuple[int, int]]) -> list[str]:
        now = datetime.now(UTC)
        with self.context.sessions.begin() as session:
            repo = SubJobRepo(session, self.parent_id)
            existing = repo.existing()
            job_ids, to_publish = [], []
            for n, (lo, hi) in enumerate(batches):
                key = self._key(n, texts[lo:hi])
                found = existing.get(key)
                if found is None:
                    row = self._row(key, list(texts[lo:hi]), now)
                    repo.insert(row)
                    found = (row.id, row.status)
                job_ids.append(found[0])
                if found[1] == JobStatus.QUEUED.value:
                    to_publish.append(found[0])
        # Commit, then publish. Re-publishing a queued sub-job of an earlier attempt is
        # safe: a message for a claimed or finished job does nothing.
        self.context.service.dispatcher.dispatch(EMBED, to_publish)
        return job_ids

    def _key(self, n: int, texts: Sequence[str]) -> str:
        digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:32]
        return f"{self.parent_id}/embed/{n}/{digest}"

    def _row(self, key: str, texts: list[str], now: datetime) -> JobRow:
        spec = {"model": self.model, "input": texts, "normalize": self.normalize}
        return JobRow(
            id=str(uuid.uuid4()),
            tenant_id=self.tenant_id,
            kind=JobKind.EMBED.value,
            status=JobStatus.QUEUED.value,
            priority=SUB_JOB_PRIORITY,
            actor=f"job:{self.parent_id[:36]}"[:64],
            spec=spec,  # the chunks were masked before chunking
            attempt=0,
            idempotency_key=key,
            parent_id=self.parent_id,
            created_at=now,
        )

    # ------------------------------------------------------------ fan in

    def _wait(
        self,
        job_ids: list[str],
        batches: list[tuple[int, int]],
        count: int,
        should_stop: Callable[[], bool],
        report: Report,
    ) -> None:
        embedded = np.zeros(count, dtype=np.bool_)
        pending = dict(zip(job_ids, batches, strict=True))
        self._progress(report(embedded))
        while pending:
            if should_stop():
                self._cancel_queued()
                raise JobCancelledError("cancelled while embedding")
            statuses = self._statuses()
            finished = [j for j in pending if statuses.get(j) == JobStatus.SUCCEEDED.value]
            for job_id in pending:
                if statuses.get(job_id) in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                    self._cancel_queued()
                    raise PermanentError(self._failure_message(job_id, statuses[job_id]))
            for job_id in finished:
                lo, hi = pending.pop(job_id)
                embedded[lo:hi] = True
            if finished:
                self._progress(report(embedded))
            elif pending:
                time.sleep(POLL_S)

    def _statuses(self) -> dict[str, str]:
        with self.context.sessions() as session:
            return SubJobRepo(session, self.parent_id).statuses()

    def _progress(self, progress: dict[str, Any]) -> None:
        with self.context.sessions.begin() as session:
            SubJobRepo(session, self.parent_id).set_progress(progress)

    def _failure_message(self, job_id: str, status: str) -> str:
        with self.context.sessions() as session:
            error_type, message = SubJobRepo(session, self.parent_id).error_of(job_id)
        detail = f": {error_type}: {message}" if error_type else ""
        return f"embedding sub-job {job_id} {status}{detail}"[:2000]

    def _cancel_queued(self) -> None:
        now = datetime.now(UTC)
        values = {
            "status": JobStatus.CANCELLED.value,
            "finished_at": now,
            "cancel_requested_at": now,
        }
        with self.context.sessions.begin() as session:
            SubJobRepo(session, self.parent_id).cancel_queued([JobStatus.QUEUED.value], values)

    def _collect(
        self, job_ids: list[str], batches: list[tuple[int, int]]
    ) -> "np.ndarray[Any, np.dtype[np.float32]]":
        rows: list[np.ndarray[Any, np.dtype[np.float32]]] = []
        for lo in range(0, len(job_ids), RESULT_SLICE):
            part = job_ids[lo : lo + RESULT_SLICE]
            with self.context.sessions() as session:
                results = SubJobRepo(session, self.parent_id).results(part)
            for job_id, (start, end) in zip(part, batches[lo : lo + RESULT_SLICE], strict=True):
                rows.append(_vectors(results.get(job_id), end - start, job_id))
        return np.concatenate(rows).astype(np.float32, copy=False)


def _vectors(result: dict[str, Any] | None, expected: int, job_id: str) -> "np.ndarray[Any, Any]":
    encoded = (result or {}).get("vectors_base64") or []
    if len(encoded) != expected:
        raise PermanentError(f"embedding sub-job {job_id} returned {len(encoded)} of {expected}")
    decoded = [np.frombuffer(base64.b64decode(v), dtype="<f4") for v in encoded]
    return np.stack(decoded).astype(np.float32, copy=False)

"""The worker side of a job: claim, renew the lease, finish. Every write is fenced.

A claim moves queued -> running (or takes over a running job whose lease expired) and
bumps the attempt; every later write names that attempt, so a stale attempt can never
overwrite a newer one. A job that is already terminal is left alone, which makes a
redelivered message a no-op.
"""

import functools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import RetryableError
from jobs.notify import JobEvents, channel
from jobs.status import ALLOWED, HELD, JobStatus, is_terminal
from jobs.webhooks import Ended, WebhookOutbox
from storage.repos import JobRepo
from storage.tables import JobRow

log = logging.getLogger(__name__)

# The statuses a finishing write may come from: a cancel requested mid-run still lets the
# attempt record its outcome (as cancelled).
LIVE = HELD


@dataclass(frozen=True)
class Claim:
    job_id: str
    kind: str
    tenant_id: str
    attempt: int
    spec: dict[str, Any]
    parent_id: str | None = None
    priority: int = 5
    created_at: datetime | None = None  # when the job was submitted
    claimed_at: datetime | None = None  # when this attempt claimed it

    @classmethod
    def of(cls, row: Any, claimed_at: datetime | None = None) -> "Claim":
        """From a JobRow or a claim's returned row (storage.repos.CLAIMED columns)."""
        return cls(
            row.id,
            row.kind,
            row.tenant_id,
            row.attempt,
            row.spec,
            row.parent_id,
            row.priority,
            row.created_at,
            claimed_at,
        )

    def ended(self, status: JobStatus, result: dict[str, Any] | None = None) -> Ended:
        """This job's ending, for its webhook event."""
        outcome = result.get("outcome") if isinstance(result, dict) else None
        return Ended(self.job_id, self.tenant_id, self.kind, status.value, self.parent_id, outcome)


class Effect(Protocol):
    """Rows a job's success writes with it, in the same transaction (a fine-tune's adapter)."""

    def __call__(self, session: Session, *, claim: Claim, result: dict[str, Any]) -> None: ...


class EndObserver(Protocol):
    """Told of every attempt's end after its write committed (worker metrics): `status`
    succeeded / failed / cancelled, or "retried" for an attempt given back to the queue."""

    def __call__(self, claim: Claim, status: str, error_type: str | None) -> None: ...


class LeaseHeldError(RetryableError):
    """Another attempt holds a live lease on the job; try again after `retry_in_s`."""

    def __init__(self, retry_in_s: float) -> None:
        super().__init__(f"job is running elsewhere; retry in {retry_in_s:.1f}s")
        self.retry_in_s = retry_in_s


class Lifecycle:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        events: JobEvents,
        lease_s: float,
        worker: str,
        outbox: WebhookOutbox | None = None,
        observer: EndObserver | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.sessions = sessions
        self.events = events
        self.lease_s = lease_s
        self.worker = worker
        self.max_attempts = max_attempts
        self.outbox = outbox  # a terminal write records its webhook events with it
        self.observer = observer

    def claim(self, job_id: str) -> Claim | None:
        """The claimed job, or None when there is nothing to run (terminal, unknown)."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            repo = JobRepo(session)
            claimed = repo.claim(
                job_id,
                statuses=[JobStatus.QUEUED.value],
                expired_lease_statuses=[JobStatus.RUNNING.value],
                to_status=JobStatus.RUNNING.value,
                now=now,
                lease_until=now + timedelta(seconds=self.lease_s),
                worker=self.worker,
                max_attempts=self.max_attempts,
            )
            row = None if claimed else repo.find(job_id)
        if claimed is not None:
            return Claim.of(claimed, now)
        if row is None:
            log.warning("message for an unknown job dropped job_id=%s", job_id)
            return None
        self._not_claimed(row, now)
        return None

    def claim_many(self, job_ids: Collection[str]) -> dict[str, Claim]:
        """`claim` for many jobs in one statement: the claims by job id. A job it could not
        claim is absent; `claim` on it says why (and raises LeaseHeldError as it does)."""
        if not job_ids:
            return {}
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            rows = JobRepo(session).claim_many(
                set(job_ids),
                statuses=[JobStatus.QUEUED.value],
                expired_lease_statuses=[JobStatus.RUNNING.value],
                to_status=JobStatus.RUNNING.value,
                now=now,
                lease_until=now + timedelta(seconds=self.lease_s),
                worker=self.worker,
                max_attempts=self.max_attempts,
            )
        return {r.id: Claim.of(r, now) for r in rows}

    def _not_claimed(self, row: JobRow, now: datetime) -> None:
        status = JobStatus(row.status)
        if is_terminal(status):
            log.info("job already %s; message ignored job_id=%s", status.value, row.id)
            return
        lease = row.lease_expires_at
        if status is JobStatus.CANCELLING and (lease is None or lease < now):
            self._end(Claim.of(row), JobStatus.CANCELLED, {})
            return
        if lease is not None and lease < now and row.attempt >= self.max_attempts:
            # Its last attempt's worker died: the reconciler's sweep ends it worker_lost.
            log.warning("last attempt lost; message dropped job_id=%s", row.id)
            return
        retry_in_s = (lease - now).total_seconds() if lease else self.lease_s
        raise LeaseHeldError(max(0.5, retry_in_s))

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when the attempt lost the job or a cancel was requested."""
        until = datetime.now(UTC) + timedelta(seconds=self.lease_s)
        with self.sessions.begin() as session:
            return JobRepo(session).update_where(
                claim.job_id,
                statuses=[JobStatus.RUNNING.value],
                attempt=claim.attempt,
                values={"lease_expires_at": until},
            )

    def holds(self, claim: Claim) -> bool:
        """True while this attempt still runs the job (no cancel requested, not taken over)."""
        with self.sessions() as session:
            state = JobRepo(session).find_state(claim.job_id)
        return state == (JobStatus.RUNNING.value, claim.attempt)

    def succeed(
        self, claim: Claim, result: dict[str, Any], effect: Effect | None = None
    ) -> JobStatus | None:
        """Store the result; a job whose cancel was requested ends cancelled (result kept).
        `effect` runs in the same transaction as the succeeded write, and only when that
        write matched (this attempt still ran the job): its rows exist exactly when the job
        succeeded. When it raises, nothing is written and the error propagates."""
        values = {"result": result, "error_type": None, "error_message": None}
        done = functools.partial(effect, claim=claim, result=result) if effect else None
        if self._end(claim, JobStatus.SUCCEEDED, values, done):
            return JobStatus.SUCCEEDED
        if self._end(claim, JobStatus.CANCELLED, values):
            return JobStatus.CANCELLED
        log.warning("stale attempt %d: result dropped job_id=%s", claim.attempt, claim.job_id)
        return None

    def succeed_many(
        self, results: Sequence[tuple[Claim, dict[str, Any]]]
    ) -> dict[str, JobStatus | None]:
        """`succeed` for many jobs (distinct ids) in one transaction, then all their notices
        in one Redis round trip. Each write is fenced by its claim's attempt, as `succeed`'s."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"error_type": None, "error_message": None}
        values.update(finished_at=now, lease_expires_at=None, status=JobStatus.SUCCEEDED.value)
        updates = [(c.job_id, c.attempt, {**values, "result": r}) for c, r in results]
        with self.sessions.begin() as session:
            repo = JobRepo(session)
            matched = repo.update_many_where(updates, statuses=[JobStatus.RUNNING.value])
            if matched == len(updates):
                ended: dict[str, JobStatus | None] = {
                    c.job_id: JobStatus.SUCCEEDED for c, _ in results
                }
            else:
                ended = self._settle_each(repo, results, now)
            deliveries = self._record(
                session, [c.ended(s, r) for c, r in results if (s := ended[c.job_id])]
            )
        self._announce_many(ended)
        self._publish(deliveries)
        for claim, _ in results:
            if (status := ended[claim.job_id]) is not None:
                self._observe(claim, status.value, None)
        return ended

    def _settle_each(
        self, repo: JobRepo, results: Sequence[tuple[Claim, dict[str, Any]]], now: datetime
    ) -> dict[str, JobStatus | None]:
        """After a batch write that did not match every row: which did (only this attempt
        can have written its job as succeeded), and the rest end cancelled where a cancel
        was requested, as `succeed` does; anything else was a stale attempt."""
        states = repo.find_states([c.job_id for c, _ in results])
        sources = [s for s in LIVE if JobStatus.CANCELLED in ALLOWED[JobStatus(s)]]
        ended: dict[str, JobStatus | None] = {}
        for claim, result in results:
            if states.get(claim.job_id) == (JobStatus.SUCCEEDED.value, claim.attempt):
                ended[claim.job_id] = JobStatus.SUCCEEDED
                continue
            final: dict[str, Any] = {"result": result, "error_type": None, "error_message": None}
            final.update(status=JobStatus.CANCELLED.value, finished_at=now, lease_expires_at=None)
            if repo.update_where(
                claim.job_id, statuses=sources, attempt=claim.attempt, values=final
            ):
                ended[claim.job_id] = JobStatus.CANCELLED
            else:
                log.warning(
                    "stale attempt %d: result dropped job_id=%s", claim.attempt, claim.job_id
                )
                ended[claim.job_id] = None
        return ended

    def _announce_many(self, ended: Mapping[str, JobStatus | None]) -> None:
        """One pipelined PUBLISH per ended job (a hint for waiters, as `JobEvents.announce`)."""
        notices = [(job_id, status.value) for job_id, status in ended.items() if status]
        if not notices:
            return
        try:
            pipe = self.events.redis.pipeline(transaction=False)
            for job_id, status in notices:
                pipe.publish(channel(job_id), status)
            pipe.execute()
        except RedisError as exc:
            log.warning("job notices not sent jobs=%d error=%s", len(notices), type(exc).__name__)

    def progress_of(self, job_id: str) -> dict[str, Any] | None:
        with self.sessions() as session:
            row = JobRepo(session).find(job_id)
            return dict(row.progress) if row is not None and row.progress else None

    def report(self, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
        """Store a running job's progress; False when `attempt` no longer runs it."""
        with self.sessions.begin() as session:
            return JobRepo(session).update_where(
                job_id, statuses=LIVE, attempt=attempt, values={"progress": progress}
            )

    def fail(self, claim: Claim, error_type: str, message: str) -> bool:
        values = {"error_type": error_type[:64], "error_message": message[:2000]}
        return self._end(claim, JobStatus.FAILED, values)

    def cancelled(self, claim: Claim, partial: dict[str, Any] | None = None) -> bool:
        """The runner stopped on a cancel request: record the job as cancelled, with the
        partial result when the runner has one."""
        values = {"result": partial} if partial is not None else {}
        return self._end(claim, JobStatus.CANCELLED, values)

    def release(self, claim: Claim, error_type: str | None = None) -> bool:
        """Give a running job back to the queue (a retryable failure); the caller republishes."""
        with self.sessions.begin() as session:
            released = JobRepo(session).update_where(
                claim.job_id,
                statuses=[JobStatus.RUNNING.value],
                attempt=claim.attempt,
                values={"status": JobStatus.QUEUED.value, "lease_expires_at": None},
            )
        if released:
            self._observe(claim, "retried", error_type)
        return released

    def _end(
        self,
        claim: Claim,
        status: JobStatus,
        values: dict[str, Any],
        effect: Callable[[Session], None] | None = None,
    ) -> bool:
        """A terminal write from whichever live status allows it (with its effect and its
        webhook events, in one transaction), then a notice."""
        sources = [s for s in LIVE if status in ALLOWED[JobStatus(s)]]
        if status is JobStatus.SUCCEEDED:
            sources = [JobStatus.RUNNING.value]  # a cancelling job ends cancelled instead
        now = datetime.now(UTC)
        final = {**values, "status": status.value, "finished_at": now, "lease_expires_at": None}
        deliveries: list[str] = []
        with self.sessions.begin() as session:
            ended = JobRepo(session).update_where(
                claim.job_id, statuses=sources, attempt=claim.attempt, values=final
            )
            if ended and effect is not None:
                effect(session)
            if ended:
                deliveries = self._record(session, [claim.ended(status, values.get("result"))])
        if ended:
            self.events.announce(claim.job_id, status.value)
            self._publish(deliveries)
            self._observe(claim, status.value, values.get("error_type"))
        return ended

    def _observe(self, claim: Claim, status: str, error_type: str | None) -> None:
        if self.observer is None:
            return
        try:
            self.observer(claim, status, error_type)
        except Exception:  # metrics must never fail a job
            log.exception("end observer failed job_id=%s", claim.job_id)

    def _record(self, session: Session, ended: Sequence[Ended]) -> list[str]:
        return self.outbox.record(session, ended) if self.outbox and ended else []

    def _publish(self, deliveries: Sequence[str]) -> None:
        if self.outbox is not None:
            self.outbox.publish(deliveries)

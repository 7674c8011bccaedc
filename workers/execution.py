"""Running one job: claim it, keep its lease alive, run the runner, record the outcome.

Plain functions and objects, so tests can drive them without Celery.
"""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jobs.catalog import KindEntry
from jobs.errors import ArtifactCorruptError, JobCancelledError, PermanentError, RetryableError
from jobs.lifecycle import Claim, Lifecycle
from jobs.status import JobStatus
from workers.cancel import CancelWatch
from workers.pool import ModelPool
from workers.runners import Runner, RunningJob

log = logging.getLogger(__name__)


@dataclass
class _Held:
    lifecycle: Lifecycle
    claim: Claim
    stop: threading.Event
    renew_at: float


class LeaseKeeper:
    """Keeps the leases of every job a worker process runs, from one thread: renews each
    lease every third of it, and checks SQL every `check_every_s` that the attempt still
    runs the job (no cancel requested, not taken over). When it does not, the job's stop
    event is set; runners poll it (an Event, no SQL), so they may do so every decoding step.
    One thread for all jobs: a generate worker runs dozens at once, and starting a thread
    per job cost ~0.3 ms of each job's latency."""

    def __init__(self, check_every_s: float = 2.0) -> None:
        self.check_every_s = check_every_s
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, lifecycle: Lifecycle, claim: Claim) -> threading.Event:
        """Start keeping `claim`'s lease; the returned event is set when the job must stop."""
        held = _Held(lifecycle, claim, threading.Event(), time.monotonic() + lifecycle.lease_s / 3)
        with self._lock:
            self._held[(claim.job_id, claim.attempt)] = held
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
                self._thread.start()
        return held.stop

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop((claim.job_id, claim.attempt), None)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._closed.wait(self._period()):
            with self._lock:
                held = list(self._held.values())
            for one in held:
                if not self._still_ours(one):
                    one.stop.set()
                    self.drop(one.claim)

    def _period(self) -> float:
        """Seconds to the next round: short leases (tests) are renewed in time too."""
        with self._lock:
            thirds = [h.lifecycle.lease_s / 3 for h in self._held.values()]
        return min([self.check_every_s, *thirds])

    def _still_ours(self, held: _Held) -> bool:
        try:
            if time.monotonic() < held.renew_at:
                return held.lifecycle.holds(held.claim)
            held.renew_at = time.monotonic() + held.lifecycle.lease_s / 3
            return held.lifecycle.renew(held.claim)
        except Exception:  # a DB blip: keep the job running, the next check may work
            log.exception("lease check failed job_id=%s", held.claim.job_id)
            return True


@contextmanager
def _kept(
    leases: LeaseKeeper, cancels: CancelWatch | None, lifecycle: Lifecycle, claim: Claim
) -> Iterator[threading.Event]:
    """The job's stop event while it runs: set by a lost lease or a cancel notice."""
    stop = leases.hold(lifecycle, claim)
    if cancels is not None:
        cancels.watch(claim.job_id, stop)
    try:
        yield stop
    finally:
        if cancels is not None:
            cancels.forget(claim.job_id)
        leases.drop(claim)


@dataclass(frozen=True)
class Outcome:
    job_id: str
    status: JobStatus | None  # None: nothing was recorded (not claimed, or a stale attempt)


def execute(
    job_id: str,
    entry: KindEntry,
    runner: Runner,
    lifecycle: Lifecycle,
    pool: ModelPool,
    max_attempts: int,
    leases: LeaseKeeper,
    cancels: CancelWatch | None = None,
) -> Outcome:
    """Run one job to a recorded outcome. A RetryableError with attempts left is re-raised
    after the job is released back to the queue, for the caller to republish."""
    claim = lifecycle.claim(job_id)
    if claim is None:
        return Outcome(job_id, None)
    spec = entry.spec_model.from_stored(claim.spec)
    log.info("job started job_id=%s kind=%s attempt=%d", job_id, entry.kind, claim.attempt)
    started = time.perf_counter()
    with _kept(leases, cancels, lifecycle, claim) as stop:
        try:
            result = runner(
                spec,
                pool,
                RunningJob(job_id, claim.attempt, stop.is_set, claim.tenant_id, claim.priority),
            )
        except JobCancelledError as exc:
            return Outcome(job_id, record_cancel(lifecycle, claim, exc.partial))
        except PermanentError as exc:
            return Outcome(job_id, record_failure(lifecycle, claim, exc))
        except RetryableError as exc:
            if claim.attempt >= max_attempts:
                return Outcome(job_id, record_failure(lifecycle, claim, exc))
            lifecycle.release(claim, type(exc).__name__)
            raise
        except Exception as exc:  # a bug or a backend crash: the job fails with the class name
            log.exception("job crashed job_id=%s", job_id)
            return Outcome(job_id, record_failure(lifecycle, claim, exc))
    run_s = time.perf_counter() - started
    try:
        status = lifecycle.succeed(claim, result.model_dump(mode="json"), entry.on_success)
    except PermanentError as exc:  # its success effect refused (an adapter name taken)
        return Outcome(job_id, record_failure(lifecycle, claim, exc))
    outcome = status.value if status else "stale"
    log.info("job finished job_id=%s status=%s run_s=%.3f", job_id, outcome, run_s)
    return Outcome(job_id, status)


def record_cancel(
    lifecycle: Lifecycle, claim: Claim, partial: dict[str, Any] | None
) -> JobStatus | None:
    log.info("job cancelled mid-run job_id=%s", claim.job_id)
    return JobStatus.CANCELLED if lifecycle.cancelled(claim, partial) else None


def record_failure(lifecycle: Lifecycle, claim: Claim, exc: Exception) -> JobStatus | None:
    if isinstance(exc, ArtifactCorruptError):  # the operator restores or rebuilds this key
        log.error("job failed job_id=%s error=%s key=%s", claim.job_id, type(exc).__name__, exc.key)
    else:
        log.warning("job failed job_id=%s error=%s", claim.job_id, type(exc).__name__)
    return JobStatus.FAILED if lifecycle.fail(claim, type(exc).__name__, str(exc)) else None

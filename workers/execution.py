"""Running one job: claim it, keep its lease alive, run the runner, record the outcome.

Plain functions and objects, so tests can drive them without Celery.
"""

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jobs.catalog import KindEntry
from jobs.errors import (
    ArtifactCorruptError,
    JobCancelledError,
    PermanentError,
    RetryableError,
    TimeLimitExceededError,
)
from jobs.lifecycle import Claim, Lifecycle
from jobs.status import JobStatus
from workers.cancel import CancelWatch
from workers.pool import ModelPool
from workers.runners import Runner, RunningJob

log = logging.getLogger(__name__)

HARD_LIMIT_EXIT_CODE = 75  # EX_TEMPFAIL: the supervisor should start the worker again


@dataclass
class _Held:
    lifecycle: Lifecycle
    claim: Claim
    stop: threading.Event
    renew_at: float
    limit_s: float = math.inf
    started: float = 0.0
    timed_out: str | None = None  # "soft" once asked to stop for its time limit, then "hard"

    def over(self, share: float) -> bool:
        return time.monotonic() - self.started >= self.limit_s * share


def exit_process(claim: Claim) -> None:
    """What the hard limit does after failing the job: only ending the process takes a
    stuck thread back (Celery's prefork pool kills its child; solo/threads pools cannot).
    The supervisor (compose, Kubernetes, the prefork parent) starts a clean one."""
    log.critical("hard time limit: worker process exits job_id=%s", claim.job_id)
    logging.shutdown()
    os._exit(HARD_LIMIT_EXIT_CODE)


class LeaseKeeper:
    """Keeps the leases of every job a worker process runs, from one thread: renews each
    lease every third of it, and checks SQL every `check_every_s` that the attempt still
    runs the job (no cancel requested, not taken over). When it does not, the job's stop
    event is set; runners poll it (an Event, no SQL), so they may do so every decoding step.
    One thread for all jobs: a generate worker runs dozens at once, and starting a thread
    per job cost ~0.3 ms of each job's latency."""

    def __init__(
        self,
        check_every_s: float = 2.0,
        on_hard_limit: Callable[[Claim], None] = exit_process,
    ) -> None:
        self.check_every_s = check_every_s
        self.on_hard_limit = on_hard_limit
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(
        self, lifecycle: Lifecycle, claim: Claim, limit_s: float = math.inf
    ) -> threading.Event:
        """Start keeping `claim`'s lease; the returned event is set when the job must stop
        (cancel, lost lease, or 90% of `limit_s`: its soft time limit)."""
        now = time.monotonic()
        held = _Held(lifecycle, claim, threading.Event(), now + lifecycle.lease_s / 3, limit_s, now)
        with self._lock:
            self._held[(claim.job_id, claim.attempt)] = held
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
                self._thread.start()
        return held.stop

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop((claim.job_id, claim.attempt), None)

    def timed_out(self, claim: Claim) -> bool:
        with self._lock:
            held = self._held.get((claim.job_id, claim.attempt))
        return held is not None and held.timed_out is not None

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._closed.wait(self._period()):
            with self._lock:
                held = list(self._held.values())
            for one in held:
                if self._enforce_limit(one):
                    continue  # failed at its hard limit (the process is ending)
                if not self._still_ours(one):
                    one.stop.set()
                    self.drop(one.claim)

    def _period(self) -> float:
        """Seconds to the next round: short leases (tests) are renewed in time, and short
        time limits enforced within a tenth of them."""
        with self._lock:
            thirds = [h.lifecycle.lease_s / 3 for h in self._held.values()]
            tenths = [h.limit_s / 10 for h in self._held.values()]
        return max(0.05, min([self.check_every_s, *thirds, *tenths]))

    def _enforce_limit(self, held: _Held) -> bool:
        """Soft limit (90%): ask the runner to stop; execute() records the failure. Hard
        limit (100%): a runner that did not stop is failed here, and the process ends;
        True then."""
        if held.timed_out is None and held.over(0.9):
            held.timed_out = "soft"
            log.warning("soft time limit job_id=%s limit_s=%g", held.claim.job_id, held.limit_s)
            held.stop.set()
        elif held.timed_out == "soft" and held.over(1.0):
            held.timed_out = "hard"
            self.drop(held.claim)
            message = f"hard time limit of {held.limit_s:g} s: the job did not stop when asked"
            try:
                held.lifecycle.fail(held.claim, TimeLimitExceededError.__name__, message)
            except Exception:  # SQL down: the lease lapses and the reconciler takes it back
                log.exception("hard time limit not recorded job_id=%s", held.claim.job_id)
            self.on_hard_limit(held.claim)
            return True
        return False

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
    leases: LeaseKeeper,
    cancels: CancelWatch | None,
    lifecycle: Lifecycle,
    claim: Claim,
    limit_s: float,
) -> Iterator[threading.Event]:
    """The job's stop event while it runs: set by a lost lease or a cancel notice."""
    stop = leases.hold(lifecycle, claim, limit_s)
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
    with _kept(leases, cancels, lifecycle, claim, entry.time_limit_s) as stop:
        try:
            result = runner(
                spec,
                pool,
                RunningJob(job_id, claim.attempt, stop.is_set, claim.tenant_id, claim.priority),
            )
        except JobCancelledError as exc:
            if leases.timed_out(claim):
                limit = TimeLimitExceededError(f"soft time limit of {entry.soft_time_limit_s:g} s")
                return Outcome(job_id, record_failure(lifecycle, claim, limit))
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

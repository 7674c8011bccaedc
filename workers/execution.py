"""Running one job: claim it, keep its lease alive, run the runner, record the outcome.

Plain functions and objects, so tests can drive them without Celery.
"""

import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from jobs.catalog import KindEntry
from jobs.errors import JobCancelledError, PermanentError, RetryableError
from jobs.lifecycle import Claim, Lifecycle
from jobs.status import JobStatus
from workers.cancel import CancelWatch
from workers.pool import ModelPool
from workers.runners import Runner, RunningJob

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the job's lease from a thread and tells the runner when to stop: a cancel
    notice (pushed by CancelWatch), or the lease thread's SQL check finding the attempt no
    longer runs the job (cancel requested, taken over). `should_stop` never touches SQL,
    so runners may call it every decoding step."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        claim: Claim,
        cancels: CancelWatch | None = None,
        check_every_s: float = 2.0,
    ) -> None:
        self.lifecycle = lifecycle
        self.claim = claim
        self.cancels = cancels
        self.check_every_s = check_every_s
        self.stop_requested = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease", daemon=True)

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    def __enter__(self) -> "LeaseKeeper":
        if self.cancels is not None:
            self.cancels.watch(self.claim.job_id, self.stop_requested)
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self.cancels is not None:
            self.cancels.forget(self.claim.job_id)
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        renew_every_s = self.lifecycle.lease_s / 3
        next_renew = time.monotonic() + renew_every_s
        while not self._done.wait(min(self.check_every_s, renew_every_s)):
            try:
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + renew_every_s
                    still_ours = self.lifecycle.renew(self.claim)
                else:
                    still_ours = self.lifecycle.holds(self.claim)
            except Exception:  # a DB blip: keep the job running, the next check may work
                log.exception("lease check failed job_id=%s", self.claim.job_id)
                continue
            if not still_ours:
                self.stop_requested.set()
                return


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
    with LeaseKeeper(lifecycle, claim, cancels) as keeper:
        try:
            result = runner(spec, pool, RunningJob(job_id, claim.attempt, keeper.should_stop))
        except JobCancelledError as exc:
            return Outcome(job_id, _record_cancel(lifecycle, claim, exc.partial))
        except PermanentError as exc:
            return Outcome(job_id, _record_failure(lifecycle, claim, exc))
        except RetryableError as exc:
            if claim.attempt >= max_attempts:
                return Outcome(job_id, _record_failure(lifecycle, claim, exc))
            lifecycle.release(claim)
            raise
        except Exception as exc:  # a bug or a backend crash: the job fails with the class name
            log.exception("job crashed job_id=%s", job_id)
            return Outcome(job_id, _record_failure(lifecycle, claim, exc))
    run_s = time.perf_counter() - started
    status = lifecycle.succeed(claim, result.model_dump(mode="json"))
    outcome = status.value if status else "stale"
    log.info("job finished job_id=%s status=%s run_s=%.3f", job_id, outcome, run_s)
    return Outcome(job_id, status)


def _record_cancel(
    lifecycle: Lifecycle, claim: Claim, partial: dict[str, Any] | None
) -> JobStatus | None:
    log.info("job cancelled mid-run job_id=%s", claim.job_id)
    return JobStatus.CANCELLED if lifecycle.cancelled(claim, partial) else None


def _record_failure(lifecycle: Lifecycle, claim: Claim, exc: Exception) -> JobStatus | None:
    log.warning("job failed job_id=%s error=%s", claim.job_id, type(exc).__name__)
    return JobStatus.FAILED if lifecycle.fail(claim, type(exc).__name__, str(exc)) else None

"""Running one job: claim it, keep its lease alive, run the runner, record the outcome.

Plain functions and objects, so tests can drive them without Celery.
"""

import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from jobs.catalog import KindEntry
from jobs.errors import JobCancelledError, PermanentError, RetryableError
from jobs.lifecycle import Claim, Lifecycle
from jobs.status import JobStatus
from workers.pool import ModelPool
from workers.runners import Runner

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the job's lease from a thread and tells the runner when to stop: a failed
    renewal, or a cancel request seen when the runner asks (at most once a second)."""

    def __init__(self, lifecycle: Lifecycle, claim: Claim, check_every_s: float = 1.0) -> None:
        self.lifecycle = lifecycle
        self.claim = claim
        self.check_every_s = check_every_s
        self.stop_requested = threading.Event()
        self._last_check = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease", daemon=True)

    def should_stop(self) -> bool:
        """Called by runners between units of work (batches, decoding steps)."""
        now = time.monotonic()
        if not self.stop_requested.is_set() and now - self._last_check >= self.check_every_s:
            self._last_check = now
            if not self.lifecycle.holds(self.claim):
                self.stop_requested.set()
        return self.stop_requested.is_set()

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        interval_s = self.lifecycle.lease_s / 3
        while not self._done.wait(interval_s):
            try:
                if not self.lifecycle.renew(self.claim):
                    self.stop_requested.set()
                    return
            except Exception:  # a DB blip: keep the job running, the next renewal may work
                log.exception("lease renewal failed job_id=%s", self.claim.job_id)


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
) -> Outcome:
    """Run one job to a recorded outcome. A RetryableError with attempts left is re-raised
    after the job is released back to the queue, for the caller to republish."""
    claim = lifecycle.claim(job_id)
    if claim is None:
        return Outcome(job_id, None)
    # Stored specs were validated at submit; masking may have made text longer than the
    # input limits, so they are rebuilt without re-checking those limits.
    spec = entry.spec_model.model_construct(**claim.spec)
    log.info("job started job_id=%s kind=%s attempt=%d", job_id, entry.kind, claim.attempt)
    started = time.perf_counter()
    with LeaseKeeper(lifecycle, claim) as keeper:
        try:
            result = runner(spec, pool, keeper.should_stop)
        except JobCancelledError:
            return Outcome(job_id, _record_cancel(lifecycle, claim))
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


def _record_cancel(lifecycle: Lifecycle, claim: Claim) -> JobStatus | None:
    log.info("job cancelled mid-run job_id=%s", claim.job_id)
    return JobStatus.CANCELLED if lifecycle.cancelled(claim) else None


def _record_failure(lifecycle: Lifecycle, claim: Claim, exc: Exception) -> JobStatus | None:
    log.warning("job failed job_id=%s error=%s", claim.job_id, type(exc).__name__)
    return JobStatus.FAILED if lifecycle.fail(claim, type(exc).__name__, str(exc)) else None

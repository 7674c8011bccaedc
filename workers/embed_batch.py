"""Micro-batching of embed jobs: small jobs that arrive together share one claim, one
embedder call and one result transaction.

Each task thread hands its job id to the process's `EmbedCollector` and waits. The
collector's thread takes what has arrived (under load, what arrived while the previous
batch ran; optionally it waits a few ms for more) and `EmbedBatch` runs it: one
`UPDATE ... RETURNING` claims every job, the texts of jobs that share a model go through
one embedder call (which sorts them by length and pads little), one transaction records
every result and one Redis pipeline publishes the notices. Then the task threads return,
so Celery acks each message after its row is written.

Per job, everything `workers.execution.execute` guarantees still holds: attempt + 1 and a
lease on claim, kept by the lease keeper and the cancel watch until the job is recorded;
every write fenced by the attempt; a job that is terminal, unknown, cancelling or held
elsewhere is handled by `Lifecycle.claim` exactly as a job run alone. A shared call that
fails (or is stopped) runs its jobs again one by one, so a failing text fails only its
own job; a job with more texts than one call may hold runs alone, so its cancel still
stops it between forward passes.
"""

import base64
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import JobCancelledError, PermanentError, RetryableError
from jobs.lifecycle import Claim, Lifecycle
from jobs.specs import EmbedResult, EmbedSpec
from jobs.status import JobStatus
from workers.cancel import CancelWatch
from workers.execution import LeaseKeeper, Outcome, record_cancel, record_failure
from workers.pool import ModelPool
from workers.runners import RunningJob, run_embed

log = logging.getLogger(__name__)

# What a task gets back for its job id: the outcome, or the exception it must handle as
# if it had run the job itself (LeaseHeldError, a retryable error with attempts left).
Answer = Outcome | Exception


@dataclass
class _Job:
    claim: Claim
    spec: EmbedSpec
    stop: threading.Event  # set by a cancel request or a lost lease


@dataclass
class _Timing:
    """Milliseconds per stage of one batch, logged with it."""

    stages: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - self._mark) * 1000
        self._mark = now

    def __str__(self) -> str:
        return " ".join(f"{stage}_ms={ms:.1f}" for stage, ms in self.stages.items())


def plan_groups(jobs: Sequence[tuple[Hashable, int]], max_texts: int) -> list[list[int]]:
    """Indices of `jobs` ((key, text count) each) grouped into shared embedder calls: same
    key (model, normalize), at most `max_texts` texts together, in arrival order. A job
    with more than `max_texts` texts gets a group of its own, after the shared ones."""
    open_groups: dict[Hashable, tuple[list[int], int]] = {}
    shared: list[list[int]] = []
    alone: list[list[int]] = []
    for index, (key, count) in enumerate(jobs):
        if count > max_texts:
            alone.append([index])
            continue
        members, texts = open_groups.get(key, ([], 0))
        if members and texts + count > max_texts:
            members, texts = [], 0
        if not members:
            shared.append(members)
        members.append(index)
        open_groups[key] = (members, texts + count)
    return shared + alone


class EmbedBatch:
    """Runs embed jobs that arrived together to recorded outcomes; plain, so tests drive it
    without Celery."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        pool: ModelPool,
        leases: LeaseKeeper,
        cancels: CancelWatch | None,
        max_attempts: int,
        max_texts: int,
    ) -> None:
        self.lifecycle = lifecycle
        self.pool = pool
        self.leases = leases
        self.cancels = cancels
        self.max_attempts = max_attempts
        self.max_texts = max_texts

    def run(self, job_ids: Sequence[str]) -> list[Answer]:
        """One answer per entry of `job_ids`, in order (a repeated id is claimed once; its
        other entries find the job held, as a redelivered message would)."""
        timing = _Timing()
        answers: dict[int, Answer] = {}
        jobs = self._claim(job_ids, answers)
        timing.lap("claim")
        try:
            plan = plan_groups([_group_key(job) for job in jobs.values()], self.max_texts)
            positions = list(jobs)
            for group in plan:
                members = [(positions[i], jobs[positions[i]]) for i in group]
                try:
                    answers.update(self._run_group(members, timing))
                except Exception as exc:  # a DB error while recording: this group's tasks
                    log.exception("embed group failed jobs=%d", len(members))
                    answers.update((index, exc) for index, _ in members)
        finally:
            for job in jobs.values():
                self._release(job)
        texts = sum(len(job.spec.input) for job in jobs.values())
        log.info(
            "embed batch messages=%d jobs=%d texts=%d %s", len(job_ids), len(jobs), texts, timing
        )
        return [answers[i] for i in range(len(job_ids))]

    # ------------------------------------------------------------ claim and release

    def _claim(self, job_ids: Sequence[str], answers: dict[int, Answer]) -> dict[int, _Job]:
        claims = self.lifecycle.claim_many(job_ids)
        jobs: dict[int, _Job] = {}
        for index, job_id in enumerate(job_ids):
            claim = claims.pop(job_id, None)
            try:
                # Not claimed together: `claim` says why (terminal, unknown, held
                # elsewhere), or claims it now if its state moved in between.
                claim = claim or self.lifecycle.claim(job_id)
            except Exception as exc:  # LeaseHeldError, a DB error: the task handles it
                answers[index] = exc
                continue
            if claim is None:
                answers[index] = Outcome(job_id, None)
                continue
            jobs[index] = self._hold(claim)
        return jobs

    def _hold(self, claim: Claim) -> _Job:
        stop = self.leases.hold(self.lifecycle, claim)
        if self.cancels is not None:
            self.cancels.watch(claim.job_id, stop)
        spec = EmbedSpec.from_stored(claim.spec)
        assert isinstance(spec, EmbedSpec)
        log.info("job started job_id=%s kind=embed attempt=%d", claim.job_id, claim.attempt)
        return _Job(claim, spec, stop)

    def _release(self, job: _Job) -> None:
        if self.cancels is not None:
            self.cancels.forget(job.claim.job_id)
        self.leases.drop(job.claim)

    # ------------------------------------------------------------ running

    def _run_group(self, members: list[tuple[int, _Job]], timing: _Timing) -> dict[int, Answer]:
        if len(members) == 1:
            index, job = members[0]
            answer = self._run_alone(job)
            timing.lap("alone")
            return {index: answer}
        jobs = [job for _, job in members]
        try:
            results = self._embed_together(jobs)
        except Exception as exc:  # a stop, a bad text, a backend error: one by one
            log.warning(
                "shared embed call failed (%s); its %d jobs run one by one",
                type(exc).__name__,
                len(jobs),
            )
            answers = {index: self._run_alone(job) for index, job in members}
            timing.lap("alone")
            return answers
        timing.lap("embed")
        ended = self._record_together(jobs, results)
        for job in jobs:
            self._release(job)
            log.info(
                "job finished job_id=%s status=%s",
                job.claim.job_id,
                _shown(ended[job.claim.job_id]),
            )
        timing.lap("record")
        return {index: Outcome(job.claim.job_id, ended[job.claim.job_id]) for index, job in members}

    def _record_together(
        self, jobs: list[_Job], results: list[dict[str, Any]]
    ) -> dict[str, JobStatus | None]:
        """One transaction for every result; should it fail, one per job, so that one bad
        row (or a statement this database refuses) costs only its own job."""
        pairs = [(job.claim, result) for job, result in zip(jobs, results, strict=True)]
        try:
            return self.lifecycle.succeed_many(pairs)
        except Exception:
            log.exception("batch write failed; writing its %d jobs one by one", len(pairs))
        return {claim.job_id: self.lifecycle.succeed(claim, result) for claim, result in pairs}

    def _embed_together(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """One embedder call over every job's texts; each job's result, in order."""
        spec = jobs[0].spec
        embedder = self.pool.embedder(spec.model)
        texts = [text for job in jobs for text in job.spec.input]
        stops = [job.stop for job in jobs]
        out = embedder.embed(texts, spec.normalize, lambda: all(s.is_set() for s in stops))
        little_endian = out.vectors.astype("<f4", copy=False)
        results, start = [], 0
        for job in jobs:
            end = start + len(job.spec.input)
            counts = out.token_counts[start:end]
            result = EmbedResult(
                model=spec.model,
                dimensions=embedder.dimensions,
                vectors_base64=[base64_row(row) for row in little_endian[start:end]],
                prompt_tokens=sum(counts),
                token_counts=counts,
            )
            results.append(result.model_dump(mode="json"))
            start = end
        return results

    def _run_alone(self, job: _Job) -> Answer:
        """The job on its own, recorded as `execute` records a job it has claimed."""
        claim = job.claim
        running = RunningJob(
            claim.job_id, claim.attempt, job.stop.is_set, claim.tenant_id, claim.priority
        )
        try:
            result = run_embed(job.spec, self.pool, running)
        except JobCancelledError as exc:
            return Outcome(claim.job_id, record_cancel(self.lifecycle, claim, exc.partial))
        except PermanentError as exc:
            return Outcome(claim.job_id, record_failure(self.lifecycle, claim, exc))
        except RetryableError as exc:
            if claim.attempt >= self.max_attempts:
                return Outcome(claim.job_id, record_failure(self.lifecycle, claim, exc))
            self.lifecycle.release(claim, type(exc).__name__)
            return exc
        except Exception as exc:  # a bug or a backend crash: the job fails with the class name
            log.exception("job crashed job_id=%s", claim.job_id)
            return Outcome(claim.job_id, record_failure(self.lifecycle, claim, exc))
        finally:
            self._release(job)
        status = self.lifecycle.succeed(claim, result.model_dump(mode="json"))
        log.info("job finished job_id=%s status=%s", claim.job_id, _shown(status))
        return Outcome(claim.job_id, status)


def _group_key(job: _Job) -> tuple[Hashable, int]:
    return (job.spec.model, job.spec.normalize), len(job.spec.input)


def _shown(status: JobStatus | None) -> str:
    return status.value if status else "stale"


def base64_row(row: Any) -> str:
    return base64.b64encode(row.tobytes()).decode()


# ---------------------------------------------------------------- the collector


@dataclass
class _Request:
    job_id: str
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None


class EmbedCollector:
    """One per worker process: task threads call `run` and wait; the collector's thread
    passes what has arrived together (at most `max_jobs`, waiting up to `collect_s` for
    more once the first is there) to `serve`, and wakes each task with its answer."""

    def __init__(
        self, serve: Callable[[list[str]], list[Answer]], max_jobs: int, collect_s: float
    ) -> None:
        self.serve = serve
        self.max_jobs = max_jobs
        self.collect_s = collect_s
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # no request is queued behind the close sentinel
        self._thread = threading.Thread(target=self._loop, name="embed-collector", daemon=True)
        self._thread.start()

    def run(self, job_id: str) -> Outcome:
        """The job's outcome once its batch is recorded; raises what its task must handle."""
        request = _Request(job_id)
        with self._lock:
            if self._closed:
                raise RuntimeError("the embed collector is closed")
            self._requests.put(request)
        request.done.wait()
        if isinstance(request.answer, Exception):
            raise request.answer
        assert request.answer is not None
        return request.answer

    def close(self) -> None:
        """Serve what has arrived, then stop the thread."""
        with self._lock:
            self._closed = True
            self._requests.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (first := self._requests.get()) is not None:
            batch, closing = self._collect(first)
            self._answer(batch)
            if closing:
                return

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and what arrives with it; True when the close sentinel came too."""
        batch = [first]
        deadline = time.monotonic() + self.collect_s
        while len(batch) < self.max_jobs:
            try:
                request = self._requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if request is None:
                return batch, True
            batch.append(request)
        return batch, False

    def _answer(self, batch: list[_Request]) -> None:
        try:
            answers: Sequence[Answer] = self.serve([r.job_id for r in batch])
        except Exception as exc:  # a DB or broker error: each task handles it as its own
            log.exception("embed batch failed jobs=%d", len(batch))
            answers = [exc] * len(batch)
        for request, answer in zip(batch, answers, strict=True):
            request.answer = answer
            request.done.set()

"""Micro-batched embed jobs: through a real worker, and `EmbedBatch` driven directly
against a real database, Redis and the real model (SQLite and PostgreSQL)."""

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from jobs.context import JobsContext
from jobs.errors import PermanentError
from jobs.keys import Principal
from jobs.lifecycle import LeaseHeldError, Lifecycle
from jobs.specs import decode_vector
from jobs.status import JobStatus
from storage.tables import JobRow
from tests.conftest import Stack
from tests.integration.test_embed_flow import cosines
from tests.integration.test_reliability import job_row
from workers.backends import Embedder, Embeddings
from workers.embed_batch import EmbedBatch
from workers.execution import LeaseKeeper, Outcome
from workers.pool import ModelPool
from workers.settings import WorkerSettings

WORDS = ["queue", "worker", "vector", "model", "batch", "redis", "lease", "claim", "notice"]


def sentences(count: int) -> list[str]:
    """Texts of different lengths, so a shared call pads and sorts."""
    return [" ".join(WORDS[: 2 + i % 9]) + f" number {i}." for i in range(count)]


def test_concurrent_single_text_jobs_share_forward_passes(stack: Stack, st_model) -> None:  # type: ignore[no-untyped-def]
    texts = sentences(48)
    who = stack.context.keys.authenticate(stack.key("batcher"))
    offset = len(stack.worker.log())
    ids = [stack.context.service.submit(who, "embed", {"input": [t]}).job.id for t in texts]
    done = [stack.context.service.wait(who, job_id, timeout_s=120) for job_id in ids]
    assert [job.status for job in done] == ["succeeded"] * len(texts)
    vectors = [decode_vector(job.result["vectors_base64"][0]) for job in done if job.result]
    alone = np.stack([st_model.encode([text], normalize_embeddings=True)[0] for text in texts])
    assert cosines(vectors, alone).min() >= 0.9999
    assert all(job.attempts == 1 for job in done)
    batches = re.findall(r"embed batch messages=\d+ jobs=(\d+)", stack.worker.log()[offset:])
    assert sum(map(int, batches)) == len(texts)
    assert max(map(int, batches)) > 1, "no two jobs shared a batch"


# ---------------------------------------------------------------- EmbedBatch directly


class Embedding:
    """The real embedder, with a hook before each call (a takeover, a cancel) and texts
    that make it fail, as a backend error on one input would."""

    def __init__(self, real: Embedder) -> None:
        self.real = real
        self.dimensions = real.dimensions
        self.before: Callable[[Sequence[str]], None] = lambda texts: None
        self.poison = "poison"
        self.calls: list[int] = []

    def embed(
        self, texts: Sequence[str], normalize: bool, should_stop: Callable[[], bool]
    ) -> Embeddings:
        self.calls.append(len(texts))
        self.before(texts)
        if any(self.poison in text for text in texts):
            raise PermanentError("this text cannot be embedded")
        return self.real.embed(texts, normalize, should_stop)

    def close(self) -> None:
        pass


class Pool:
    def __init__(self, embedder: Embedding) -> None:
        self.the_embedder = embedder

    def embedder(self, name: str) -> Embedding:
        return self.the_embedder


@pytest.fixture(scope="module")
def real_embedder() -> Iterator[Embedder]:
    from jobs.registry import ModelRegistry

    pool = ModelPool(ModelRegistry.load(None, frozenset()), WorkerSettings(preload_models=[]))
    yield pool.embedder("all-MiniLM-L6-v2")
    pool.close()


@pytest.fixture
def embedding(real_embedder: Embedder) -> Embedding:
    return Embedding(real_embedder)


@pytest.fixture
def leases() -> Iterator[LeaseKeeper]:
    keeper = LeaseKeeper(check_every_s=0.05)
    yield keeper
    keeper.close()


def principal(context: JobsContext) -> Principal:
    return context.keys.authenticate(context.keys.create("embed-batch").secret)


def batch_of(context: JobsContext, embedding: Embedding, leases: LeaseKeeper) -> EmbedBatch:
    lifecycle = context.lifecycle("batch-worker")
    return EmbedBatch(lifecycle, Pool(embedding), leases, None, max_attempts=3, max_texts=128)  # type: ignore[arg-type]


def submit(context: JobsContext, who: Principal, texts: Sequence[str]) -> list[str]:
    return [context.service.submit(who, "embed", {"input": [t]}).job.id for t in texts]


def test_one_claim_one_call_one_write_for_the_batch(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper, st_model: Any
) -> None:
    who = principal(quiet_context)
    texts = sentences(12)
    ids = submit(quiet_context, who, texts)
    answers = batch_of(quiet_context, embedding, leases).run(ids)
    assert answers == [Outcome(job_id, JobStatus.SUCCEEDED) for job_id in ids]
    assert embedding.calls == [12]
    jobs = [quiet_context.service.get(who, job_id) for job_id in ids]
    vectors = [decode_vector(job.result["vectors_base64"][0]) for job in jobs if job.result]
    alone = np.stack([st_model.encode([text], normalize_embeddings=True)[0] for text in texts])
    assert cosines(vectors, alone).min() >= 0.9999
    rows = [job_row(quiet_context, job_id) for job_id in ids]
    assert {(r["status"], r["attempt"], r["worker"]) for r in rows} == {
        ("succeeded", 1, "batch-worker")
    }
    assert all(r["lease_expires_at"] is None and r["finished_at"] for r in rows)


def test_terminal_unknown_and_repeated_jobs_are_left_alone(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper
) -> None:
    who = principal(quiet_context)
    ids = submit(quiet_context, who, sentences(4))
    quiet_context.service.cancel(who, ids[1])
    before = job_row(quiet_context, ids[1])
    ghost = "00000000-0000-4000-8000-000000000000"
    answers = batch_of(quiet_context, embedding, leases).run([*ids, ghost, ids[0]])
    assert answers[1] == Outcome(ids[1], None) and answers[4] == Outcome(ghost, None)
    assert isinstance(answers[5], LeaseHeldError)  # the repeat finds its job held
    assert [answers[i] for i in (0, 2, 3)] == [
        Outcome(ids[i], JobStatus.SUCCEEDED) for i in (0, 2, 3)
    ]
    assert job_row(quiet_context, ids[1]) == before
    assert embedding.calls == [3]


def test_results_are_fenced_by_attempt(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper
) -> None:
    who = principal(quiet_context)
    ids = submit(quiet_context, who, sentences(3))
    rival = quiet_context.lifecycle("rival")
    taken: list[Any] = []

    def take_over(texts: Sequence[str]) -> None:
        # The batch's lease on ids[0] expires and another worker claims it (attempt 2).
        past = datetime(2000, 1, 1, tzinfo=UTC)
        with quiet_context.engine.begin() as connection:
            connection.execute(
                update(JobRow).where(JobRow.id == ids[0]).values(lease_expires_at=past)
            )
        taken.append(rival.claim(ids[0]))

    embedding.before = take_over
    answers = batch_of(quiet_context, embedding, leases).run(ids)
    assert taken[0] is not None and taken[0].attempt == 2
    assert answers[0] == Outcome(ids[0], None)  # the stale attempt's result is dropped
    assert answers[1:] == [Outcome(job_id, JobStatus.SUCCEEDED) for job_id in ids[1:]]
    row = job_row(quiet_context, ids[0])
    assert (row["status"], row["attempt"], row["result"]) == ("running", 2, None)
    assert rival.succeed(taken[0], {"from": "rival"}) is JobStatus.SUCCEEDED


def test_cancel_requested_mid_batch_ends_that_job_cancelled(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper
) -> None:
    who = principal(quiet_context)
    ids = submit(quiet_context, who, sentences(3))
    embedding.before = lambda texts: quiet_context.service.cancel(who, ids[2]) and None
    answers = batch_of(quiet_context, embedding, leases).run(ids)
    assert answers[2] == Outcome(ids[2], JobStatus.CANCELLED)
    assert answers[:2] == [Outcome(job_id, JobStatus.SUCCEEDED) for job_id in ids[:2]]
    cancelled = quiet_context.service.get(who, ids[2])
    assert cancelled.status == "cancelled" and cancelled.result is not None


def test_a_failing_shared_call_fails_only_the_bad_job(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper
) -> None:
    who = principal(quiet_context)
    texts = sentences(5)
    texts[3] = "a poison text"
    ids = submit(quiet_context, who, texts)
    answers = batch_of(quiet_context, embedding, leases).run(ids)
    assert embedding.calls == [5, 1, 1, 1, 1, 1]  # the shared call, then one by one
    expected = [JobStatus.SUCCEEDED] * 5
    expected[3] = JobStatus.FAILED
    assert answers == [Outcome(job_id, s) for job_id, s in zip(ids, expected, strict=True)]
    failed = quiet_context.service.get(who, ids[3])
    assert failed.error is not None and failed.error.type == "PermanentError"


def test_notices_wake_waiters_of_every_job_in_the_batch(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper
) -> None:
    who = principal(quiet_context)
    ids = submit(quiet_context, who, sentences(6))
    woken: dict[str, str] = {}
    ready = threading.Barrier(len(ids) + 1)

    def wait(job_id: str) -> None:
        ready.wait()
        woken[job_id] = quiet_context.service.wait(who, job_id, timeout_s=10).status

    threads = [threading.Thread(target=wait, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    ready.wait()
    batch_of(quiet_context, embedding, leases).run(ids)
    for thread in threads:
        thread.join(timeout=15)
    assert woken == dict.fromkeys(ids, "succeeded")


def test_claim_many_gives_attempt_and_lease(quiet_context: JobsContext) -> None:
    who = principal(quiet_context)
    ids = submit(quiet_context, who, sentences(3))
    lifecycle: Lifecycle = quiet_context.lifecycle("claimer")
    claims = lifecycle.claim_many(ids)
    assert sorted(claims) == sorted(ids)
    assert {claim.attempt for claim in claims.values()} == {1}
    assert claims[ids[0]].spec["input"] == [sentences(3)[0]]
    assert lifecycle.claim_many(ids) == {}  # held: nothing more to claim
    for job_id in ids:
        row = job_row(quiet_context, job_id)
        assert row["status"] == "running" and row["lease_expires_at"] is not None
        with pytest.raises(LeaseHeldError):
            quiet_context.lifecycle("other").claim(job_id)


def test_a_group_that_cannot_be_recorded_fails_only_its_own_tasks(
    quiet_context: JobsContext, embedding: Embedding, leases: LeaseKeeper
) -> None:
    who = principal(quiet_context)
    ids = submit(quiet_context, who, sentences(4))
    lifecycle = quiet_context.lifecycle("batch-worker")
    succeed_many, succeed = lifecycle.succeed_many, lifecycle.succeed

    def refuse_many(pairs: Any) -> Any:
        if any(claim.job_id == ids[0] for claim, _ in pairs):
            raise RuntimeError("database went away")
        return succeed_many(pairs)

    def refuse_one(claim: Any, result: Any) -> Any:
        if claim.job_id == ids[0]:
            raise RuntimeError("database went away")
        return succeed(claim, result)

    lifecycle.succeed_many = refuse_many  # type: ignore[method-assign]
    lifecycle.succeed = refuse_one  # type: ignore[method-assign]
    batch = EmbedBatch(lifecycle, Pool(embedding), leases, None, max_attempts=3, max_texts=2)  # type: ignore[arg-type]
    answers = batch.run(ids)
    assert embedding.calls == [2, 2]  # two shared calls of two
    assert all(isinstance(answer, RuntimeError) for answer in answers[:2])
    assert answers[2:] == [Outcome(job_id, JobStatus.SUCCEEDED) for job_id in ids[2:]]

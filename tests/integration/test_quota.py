"""The per-tenant quotas (jobs in flight, enqueued input tokens): refused at submit with
429 and Retry-After, nothing written."""

import asyncio
import json

import pytest

from api_gateway.errors import on_seekq_error
from jobs.batches import BatchCreate
from jobs.errors import QuotaExceededError, SpecError
from storage.repos import JobRepo
from tests.conftest import Stack, flush_redis, make_context, unique


def test_a_tenant_over_its_quota_is_told_to_come_back(stack: Stack) -> None:
    db = stack.redis_db + 2  # the quiet contexts' broker: no worker, the jobs stay queued
    flush_redis(db)
    context = make_context(stack.database_url, db, stack.tmp, tenant_max_jobs_in_flight=3)
    try:
        who = context.keys.authenticate(context.keys.create(unique("quota")).secret)
        other = context.keys.authenticate(context.keys.create(unique("other")).secret)
        jobs = [context.service.submit(who, "ping", {"payload": str(i)}).job for i in range(3)]
        with pytest.raises(QuotaExceededError, match="3 jobs queued or running, its quota is 3"):
            context.service.submit(who, "ping", {"payload": "one too many"})
        with context.sessions() as session:
            assert JobRepo(session).in_flight_totals(who.tenant_id, ["queued"])[0] == 3
        context.service.submit(other, "ping", {})  # another tenant's quota is its own
        context.service.cancel(who, jobs[0].id)  # a finished job frees its place
        context.service.submit(who, "ping", {"payload": "now it fits"})
    finally:
        context.close()


def test_enqueued_input_tokens_have_a_quota(stack: Stack) -> None:
    db = stack.redis_db + 2  # no worker: the jobs stay queued
    flush_redis(db)
    context = make_context(stack.database_url, db, stack.tmp, tenant_max_enqueued_tokens=100)
    model = "all-MiniLM-L6-v2"
    try:
        who = context.keys.authenticate(context.keys.create(unique("tokens")).secret)
        first = context.service.submit(who, "embed", {"model": model, "input": ["x" * 200]})
        assert first.job.spec["input"] == ["x" * 200]  # 200 bytes: 50 tokens
        context.service.submit(who, "embed", {"model": model, "input": ["y" * 160, "z" * 40]})
        with pytest.raises(QuotaExceededError, match="about 100 input tokens queued or running"):
            context.service.submit(who, "embed", {"model": model, "input": ["w"]})
        with context.sessions() as session:
            assert JobRepo(session).in_flight_totals(who.tenant_id, ["queued"]) == (2, 100)
        with pytest.raises(SpecError, match="more than the tenant's enqueued-token quota"):
            context.service.submit(who, "embed", {"model": model, "input": ["v" * 404]})
        context.service.cancel(who, first.job.id)
        # A batch counts its whole input file: 3 lines of 20 tokens.
        line = {"method": "POST", "url": "/v1/embeddings", "body": {"model": model}}
        rows = [
            {**line, "custom_id": f"r{i}", "body": {"model": model, "input": "q" * 80}}
            for i in range(3)
        ]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        uploaded = context.files.upload(who, "in.jsonl", data, "batch")
        body = BatchCreate(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        with pytest.raises(QuotaExceededError, match="this request's 60 would pass"):
            context.batches.create(who, body)
        context.service.cancel(
            who, context.service.list_jobs(who, kind="embed", limit=10).data[0].id
        )
        batch = context.batches.create(who, body)
        with context.sessions() as session:
            assert JobRepo(session).in_flight_totals(who.tenant_id, ["queued"]) == (1, 60)
        assert batch.status == "validating"
    finally:
        context.close()


def test_the_gateway_answers_429_with_retry_after() -> None:
    response = asyncio.run(on_seekq_error(None, QuotaExceededError("over quota")))  # type: ignore[arg-type]
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert json.loads(response.body)["error"]["code"] == "quota_exceeded"

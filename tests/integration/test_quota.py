"""The jobs-in-flight quota: refused at submit with 429 and Retry-After, nothing written."""

import asyncio
import json

import pytest

from api_gateway.errors import on_seekq_error
from jobs.errors import QuotaExceededError
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
            assert JobRepo(session).count_in_flight(who.tenant_id, ["queued"]) == 3
        context.service.submit(other, "ping", {})  # another tenant's quota is its own
        context.service.cancel(who, jobs[0].id)  # a finished job frees its place
        context.service.submit(who, "ping", {"payload": "now it fits"})
    finally:
        context.close()


def test_the_gateway_answers_429_with_retry_after() -> None:
    response = asyncio.run(on_seekq_error(None, QuotaExceededError("over quota")))  # type: ignore[arg-type]
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert json.loads(response.body)["error"]["code"] == "quota_exceeded"

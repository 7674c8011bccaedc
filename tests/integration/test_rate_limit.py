"""Per-API-key rate limits (api_gateway.rate_limit): a real gateway over HTTP with a small
limit, its buckets in the stack's real Redis."""

import asyncio
import logging
import math
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as AsyncRedis

from api_gateway.rate_limit import KeyRateLimiter, duration_text
from seekq.embedded import free_port
from tests.conftest import Stack, redis_url, served, unique

PER_MINUTE = 60  # one request a second comes back
BURST = 3


@pytest.fixture(scope="module")
def limited_url(stack: Stack) -> Iterator[str]:
    """A second gateway on the stack's context and Redis, with a small per-key limit."""
    limits = {"rate_limit_per_minute": PER_MINUTE, "rate_limit_burst": BURST}
    with served(stack.context, **limits) as url:
        yield url


def client(url: str, stack: Stack, tenant: str) -> httpx.Client:
    key = stack.key(tenant)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_key_over_its_rate_gets_429_and_comes_back_after_retry_after(
    stack: Stack, limited_url: str
) -> None:
    with client(limited_url, stack, unique("rl")) as http:
        answers = [http.get("/v1/models") for _ in range(BURST)]
        assert [a.status_code for a in answers] == [200] * BURST
        assert answers[0].headers["x-ratelimit-limit-requests"] == str(BURST)
        remaining = [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers]
        assert remaining == [BURST - 1, BURST - 2, 0]
        assert answers[-1].headers["x-ratelimit-reset-requests"].endswith("s")

        refused = http.get("/v1/models")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "invalid_request_error"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= math.ceil(60 / PER_MINUTE)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"

        time.sleep(retry_after)
        again = http.get("/v1/models")
        assert again.status_code == 200, again.text
        assert again.headers["x-ratelimit-remaining-requests"] == "0"


def test_one_keys_exhaustion_leaves_other_keys_alone(stack: Stack, limited_url: str) -> None:
    tenant = unique("rl")
    with client(limited_url, stack, tenant) as http:
        statuses = [http.get("/v1/jobs").status_code for _ in range(BURST + 2)]
    assert statuses[-2:] == [429, 429]
    # Another tenant, and a second key of the same tenant, have their own buckets.
    second_key = stack.context.keys.create(tenant).secret
    with client(limited_url, stack, unique("rl")) as other:
        assert other.get("/v1/jobs").status_code == 200
    headers = {"Authorization": f"Bearer {second_key}"}
    assert httpx.get(f"{limited_url}/v1/jobs", headers=headers).status_code == 200


def test_the_openai_package_sees_a_rate_limit_error(stack: Stack, limited_url: str) -> None:
    sdk = openai.OpenAI(base_url=f"{limited_url}/v1", api_key=stack.key(unique("rl")))
    sdk = sdk.with_options(max_retries=0)
    for _ in range(BURST):
        sdk.models.list()
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.models.list()
    assert raised.value.code == "rate_limit_exceeded"


def test_requests_without_a_valid_key_never_touch_a_bucket(stack: Stack, limited_url: str) -> None:
    # A forged key naming a real key id is refused by authentication (401), so it cannot
    # drain that key's bucket.
    real = stack.key(unique("rl"))
    forged = real.rsplit("_", 1)[0] + "_" + "x" * 20
    for _ in range(BURST + 2):
        answer = httpx.get(f"{limited_url}/v1/jobs", headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401
        assert "x-ratelimit-remaining-requests" not in answer.headers
    with httpx.Client(base_url=limited_url, headers={"Authorization": f"Bearer {real}"}) as http:
        assert http.get("/v1/jobs").headers["x-ratelimit-remaining-requests"] == str(BURST - 1)


def test_gateways_sharing_redis_share_each_keys_bucket(stack: Stack) -> None:
    async def run() -> list[bool]:
        url = redis_url(stack.redis_db)
        gateways = [KeyRateLimiter.connect(url, 60, 2, CollectorRegistry()) for _ in range(2)]
        key_id = unique("shared")
        decisions = [await gateways[n % 2].check(key_id) for n in range(4)]
        for limiter in gateways:
            await limiter.close()
        return [d.allowed for d in decisions if d is not None]

    assert asyncio.run(run()) == [True, True, False, False]


def test_redis_down_lets_requests_through_with_a_warning_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> tuple[object, object, float]:
        registry = CollectorRegistry()
        limiter = KeyRateLimiter.connect(f"redis://127.0.0.1:{free_port()}/0", 60, 2, registry)
        first = await limiter.check("k1")
        second = await limiter.check("k1")
        await limiter.close()
        return first, second, registry.get_sample_value("seekq_rate_limit_errors_total") or 0

    with caplog.at_level(logging.WARNING, logger="api_gateway.rate_limit"):
        first, second, errors = asyncio.run(run())
    assert first is None and second is None  # not checked: let through
    assert errors == 2
    warnings = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(warnings) == 1  # once per WARN_EVERY_S, not once per request


def test_a_zero_rate_turns_the_limit_off() -> None:
    async def run() -> object:
        redis = AsyncRedis.from_url("redis://127.0.0.1:1/0")  # never contacted
        limiter = KeyRateLimiter(redis, 0, 1, CollectorRegistry())
        decision = await limiter.check("k1")
        await limiter.close()
        return decision

    assert asyncio.run(run()) is None


def test_reset_durations_are_written_as_openai_writes_them() -> None:
    assert duration_text(0.02) == "20ms"
    assert duration_text(1.5) == "1.5s"
    assert duration_text(360) == "6m0s"
    assert duration_text(61.25) == "1m1.25s"

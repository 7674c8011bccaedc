"""Per-API-key request rate limits, shared by every gateway process through Redis.

Each key has a bucket of `burst` requests that refills at `per_minute` requests a minute,
kept as GCRA (the "theoretical arrival time" of the next request, one Redis string per
key) and updated by one Lua script, so the check and the update are atomic across any
number of gateways. The script reads Redis's clock, not the gateway's: gateways with
skewed clocks still agree.

Limits apply after authentication, keyed by the key's id: a request with a forged or
revoked key is refused with 401 before it can drain anybody's bucket, and one key's
bucket never affects another's.

Over the limit: 429 `rate_limit_exceeded` with `Retry-After` (whole seconds, rounded up).
Every limited answer carries OpenAI's `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` (time until the bucket
is full again, as `1.5s` or `2m0s`).

Redis unreachable: the request goes through (fail open) with a warning logged (at most
every WARN_EVERY_S) and `seekq_rate_limit_errors_total` counted. A limiter is an
abuse brake, not an access control: refusing every request while Redis is down would
turn a broker outage into a full gateway outage, and job submission fails on its own
without Redis anyway.
"""

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import RetryableError

log = logging.getLogger(__name__)

KEY_PREFIX = "seekq:ratelimit:"
STATE_FIELD = "rate_limit"  # where the decision waits in the request's scope["state"]
WARN_EVERY_S = 30.0
TIMEOUT_S = 0.5  # a slow Redis must not hold every request up for long

# KEYS[1]: the key's bucket. ARGV: emission interval (µs per request), burst.
# Returns {allowed, remaining, retry after µs, µs until the bucket is full again}.
# Times are integers of µs; string.format keeps all their digits (Lua's tostring would
# round them to 14 significant ones).
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local next_tat = tat + interval
if next_tat - now > capacity then
  return {0, 0, next_tat - capacity - now, tat - now}
end
local ttl_ms = math.ceil((next_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', ttl_ms)
return {1, math.floor((capacity - (next_tat - now)) / interval), 0, next_tat - now}
"""


class RateLimitExceededError(RetryableError):
    """The API key has used up its request rate; `retry_after_s` says when to try again."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"rate limit reached for this API key: retry in {retry_after_s:.1f} s")


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int  # the bucket's size (burst)
    remaining: int
    retry_after_s: float
    reset_s: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        values = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": duration_text(self.reset_s),
        }
        return [(name.encode(), value.encode()) for name, value in values.items()]


def duration_text(seconds: float) -> str:
    """A duration the way OpenAI writes it in x-ratelimit-reset-*: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class KeyRateLimiter:
    """The per-key limiter of one gateway; `per_minute` 0 turns it off."""

    def __init__(
        self, redis: AsyncRedis, per_minute: int, burst: int, registry: CollectorRegistry
    ) -> None:
        self.redis = redis
        self.per_minute = per_minute
        self.burst = burst
        self.interval_us = math.ceil(60_000_000 / per_minute) if per_minute else 0
        self.script = redis.register_script(GCRA_SCRIPT)
        self._warned_at = -math.inf
        self.refused = Counter(
            "seekq_rate_limited",
            "Requests refused with 429 by the per-key rate limit.",
            registry=registry,
        )
        self.errors = Counter(
            "seekq_rate_limit_errors",
            "Requests let through unchecked because Redis did not answer the rate limiter.",
            registry=registry,
        )

    @classmethod
    def connect(
        cls, broker_url: str, per_minute: int, burst: int, registry: CollectorRegistry
    ) -> "KeyRateLimiter":
        redis = AsyncRedis.from_url(
            broker_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        return cls(redis, per_minute, burst, registry)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    async def check(self, key_id: str) -> RateDecision | None:
        """The decision for one more request of `key_id`; None when not checked (off, or
        Redis unreachable: fail open)."""
        if not self.enabled:
            return None
        try:
            reply = await self.script(
                keys=[KEY_PREFIX + key_id], args=[self.interval_us, self.burst]
            )
        except (RedisError, OSError) as exc:
            self._failed_open(exc)
            return None
        allowed, remaining, retry_us, reset_us = (int(value) for value in reply)
        return RateDecision(bool(allowed), self.burst, remaining, retry_us / 1e6, reset_us / 1e6)

    async def admit(self, key_id: str, state: dict[str, Any]) -> None:
        """Count one request of `key_id`; raise RateLimitExceededError over the limit. The
        decision is left in `state` for RateLimitHeaders."""
        decision = await self.check(key_id)
        if decision is None:
            return
        state[STATE_FIELD] = decision
        if not decision.allowed:
            self.refused.inc()
            raise RateLimitExceededError(decision.retry_after_s)

    async def close(self) -> None:
        await self.redis.aclose()

    def _failed_open(self, exc: Exception) -> None:
        self.errors.inc()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            reason = type(exc).__name__
            log.warning("rate limiter cannot reach Redis (%s): letting requests through", reason)


class RateLimitHeaders:
    """Adds the x-ratelimit-* headers of the request's decision to its response (errors
    and streams included), whatever the route returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            decision = scope.get("state", {}).get(STATE_FIELD)
            if message["type"] == "http.response.start" and decision is not None:
                message = {**message, "headers": [*message.get("headers", []), *decision.headers()]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
